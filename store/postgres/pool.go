package postgres

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// idleCheckAfter is how long a connection may sit idle before it is pinged
// on its next use.
const idleCheckAfter = time.Minute

// pool is a small bounded pool of pgx connections.
//
// pgxpool needs github.com/jackc/puddle/v2, which is not among the module's
// requirements; this pool covers what the store needs: a bound on open
// connections, reuse of healthy idle ones, and disposal of connections left
// broken or inside a transaction.
type pool struct {
	cfg   *pgx.ConnConfig
	slots chan struct{} // one token per connection in use

	mu     sync.Mutex
	idle   []idleConn
	closed bool
}

type idleConn struct {
	conn  *pgx.Conn
	since time.Time // zero: check before use
}

func newPool(cfg *pgx.ConnConfig, maxConns int) *pool {
	return &pool{cfg: cfg, slots: make(chan struct{}, maxConns)}
}

// acquire returns a connection for exclusive use until release.
func (p *pool) acquire(ctx context.Context) (*pgx.Conn, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			<-p.slots
			return nil, errClosed
		}
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			break
		}
		ic := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if time.Since(ic.since) < idleCheckAfter {
			return ic.conn, nil
		}
		if err := ic.conn.Ping(ctx); err == nil {
			return ic.conn, nil
		}
		closeConn(ic.conn)
		if ctx.Err() != nil {
			<-p.slots
			return nil, ctx.Err()
		}
	}
	conn, err := pgx.ConnectConfig(ctx, p.cfg)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return conn, nil
}

// release returns conn to the pool, or closes it when it is broken, busy or
// still inside a transaction (the server then rolls the transaction back and
// drops its locks).
func (p *pool) release(conn *pgx.Conn) {
	pc := conn.PgConn()
	healthy := !conn.IsClosed() && !pc.IsBusy() && pc.TxStatus() == 'I'
	p.mu.Lock()
	if healthy && !p.closed {
		p.idle = append(p.idle, idleConn{conn: conn, since: time.Now()})
		p.mu.Unlock()
		<-p.slots
		return
	}
	if conn.IsClosed() {
		// The connection broke; its idle siblings may be broken too (for
		// example after a server restart), so check them before reuse.
		for i := range p.idle {
			p.idle[i].since = time.Time{}
		}
	}
	p.mu.Unlock()
	closeConn(conn)
	<-p.slots
}

// close closes the idle connections; connections in use are closed when
// they are released. It is safe to call more than once.
func (p *pool) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.closed = true
	p.mu.Unlock()
	for _, ic := range idle {
		closeConn(ic.conn)
	}
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

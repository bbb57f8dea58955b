package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pool adapts pgxpool to the store's needs: connections are handed out as
// *pgx.Conn for exclusive use until release. pgxpool destroys, rather than
// reuses, a connection that is released broken, busy or still inside a
// transaction (the server then rolls the transaction back and drops its
// locks), and pings connections that sat idle before reusing them.
type pool struct {
	p *pgxpool.Pool

	mu     sync.Mutex
	held   map[*pgx.Conn]*pgxpool.Conn
	closed bool
}

func newPool(cfg *pgx.ConnConfig, maxConns int) (*pool, error) {
	pc, err := pgxpool.ParseConfig("")
	if err != nil {
		return nil, fmt.Errorf("pool config: %w", err)
	}
	pc.ConnConfig = cfg
	pc.MaxConns = int32(maxConns)
	pc.MinConns = 0
	pc.HealthCheckPeriod = 30 * time.Second
	pc.BeforeClose = deregister
	p, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	return &pool{p: p, held: map[*pgx.Conn]*pgxpool.Conn{}}, nil
}

// acquire returns a connection for exclusive use until release.
func (p *pool) acquire(ctx context.Context) (*pgx.Conn, error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	c, err := p.p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	conn := c.Conn()
	p.mu.Lock()
	p.held[conn] = c
	p.mu.Unlock()
	return conn, nil
}

// release returns conn to the pool (or has it destroyed, see pool).
func (p *pool) release(conn *pgx.Conn) {
	p.mu.Lock()
	c := p.held[conn]
	delete(p.held, conn)
	p.mu.Unlock()
	if c != nil {
		c.Release()
	}
}

// close closes the pool; it waits for acquired connections to be released.
// It is safe to call more than once.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.p.Close()
}

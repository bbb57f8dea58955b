package processor

import (
	"context"

	"github.com/hygiene/pseudonymizer/store"
)

// KeyStore is what a Processor needs of a key store: the six calls of its
// two lanes. Every store.KeyStore satisfies it; see store.KeyStore for the
// contract of each method.
type KeyStore interface {
	// Resolve returns the keys of an order batch's subjects, creating the
	// missing ones.
	Resolve(ctx context.Context, lookups []store.Lookup) ([]store.Entry, error)
	// Guard excludes Forget until released and lists the subjects
	// forgotten since a position.
	Guard(ctx context.Context, since store.Position) (store.Guard, error)
	// Object records the objection states of a forget-lane batch.
	Object(ctx context.Context, reqs []store.ObjectionRequest) ([]store.ObjectionResult, error)
	// Forget destroys the keys of a forget batch's subjects.
	Forget(ctx context.Context, reqs []store.ForgetRequest) ([]store.ForgetResult, error)
	// Settle releases keys retained for erasure notices once committed.
	Settle(ctx context.Context, reqs []store.ForgetRequest) error
	// SettleCommitted releases retained keys below the forget group's
	// committed offsets.
	SettleCommitted(ctx context.Context, committed map[int32]int64) (retained int, err error)
}

var _ KeyStore = store.KeyStore(nil)

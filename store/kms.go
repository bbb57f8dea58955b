package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/aws/smithy-go"
	"gocloud.dev/secrets"
)

// Meta is a store's small named metadata that lives outside the keyring,
// readable before any KEK is known: it holds the data keys wrapped by a
// key-management service (see DataKey). Names live in their own namespace
// and cannot touch the store's internal entries.
//
// Implementations must be safe for concurrent use, and the PostgreSQL one
// also by many processes.
type Meta interface {
	// GetMeta returns the value stored under name, or nil when there is
	// none (also when the store was never initialized).
	GetMeta(ctx context.Context, name string) ([]byte, error)
	// SwapMeta stores value (not nil) under name if the stored value
	// equals old (nil: no value stored), and reports whether it did.
	SwapMeta(ctx context.Context, name string, old, value []byte) (bool, error)
}

// MaxMetaSize bounds the names and values a Meta accepts.
const MaxMetaSize = 16 << 10

// CheckMeta validates a Meta name and value (value may be nil for a read).
// Stores call it before touching their storage.
func CheckMeta(name string, value []byte) error {
	switch {
	case name == "" || len(name) > 200:
		return errors.New("meta: name must have 1 to 200 bytes")
	case len(value) > MaxMetaSize:
		return fmt.Errorf("meta: value larger than %d bytes", MaxMetaSize)
	}
	return nil
}

// KMSKey is a key held by a key-management service: it encrypts and
// decrypts small secrets and never leaves the service. *secrets.Keeper
// (gocloud.dev/secrets) satisfies it.
type KMSKey interface {
	Encrypt(ctx context.Context, plaintext []byte) ([]byte, error)
	Decrypt(ctx context.Context, ciphertext []byte) ([]byte, error)
}

// OpenKMSKey opens the KMS key named by a gocloud.dev/secrets URL
// (awskms://, gcpkms://, azurekeyvault://, base64key://; the program
// registers the drivers it supports). An azurekeyvault:// URL must name
// the key version. The error never contains the URL, which for
// base64key:// is the key itself.
func OpenKMSKey(ctx context.Context, rawURL string) (*secrets.Keeper, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		return nil, errors.New("kms: not a URL such as awskms:///arn:aws:kms:…")
	}
	if u.Scheme == "azurekeyvault" && len(strings.Split(strings.Trim(u.Path, "/"), "/")) < 3 {
		// Key Vault decrypts with the version the URL names, the newest
		// one if none: the key's next version would make the stored data
		// key undecryptable.
		return nil, errors.New("kms: an azurekeyvault:// URL must name the key version: azurekeyvault://VAULT.vault.azure.net/keys/KEY/VERSION")
	}
	k, err := secrets.OpenKeeper(ctx, rawURL)
	if err != nil {
		return nil, fmt.Errorf("kms: open %s:// key: %s", u.Scheme, redact(err.Error(), rawURL))
	}
	return k, nil
}

// redact removes every form of rawURL (and its parts) from msg.
func redact(msg, rawURL string) string {
	forms := []string{rawURL}
	if u, err := url.Parse(rawURL); err == nil {
		forms = append(forms, u.String(), u.Host+u.Path, u.Host, u.Path, u.RawQuery)
	}
	for _, f := range forms {
		if len(f) >= 4 {
			msg = strings.ReplaceAll(msg, f, "…")
		}
	}
	return msg
}

// dataKeyVersion is the first byte of a stored data key record:
// version (1) | KEK id (4) | KMS ciphertext.
const dataKeyVersion = 1

// DataKeyName is the Meta name of the data key wrapped by the KMS key at
// kmsURL: a hash of the URL, so the record neither reveals nor depends on
// anything but the URL's text. Every instance must name the KMS key with
// the same URL.
func DataKeyName(kmsURL string) string {
	h := sha256.Sum256([]byte("pseudonymizer/kms-url/v1\x00" + kmsURL))
	return "kms-data-key/" + hex.EncodeToString(h[:8])
}

// ErrNoDataKey is returned by DataKey when no data key is stored for the
// KMS key and none may be created.
var ErrNoDataKey = errors.New("no data key stored for this KMS key")

// DataKey returns the data key that kms wraps, a KEK for the Keyring: the
// KMS decrypts it once here, and it then wraps subject keys locally, so no
// KMS call happens per subject or per event. The record lives in meta under
// name (see DataKeyName). When there is none and create is set, DataKey
// makes a random data key, has the KMS encrypt it and stores it, unless
// another process stored one first, which it then uses. KMS errors are
// returned as the KMS reported them (they name the key, never key
// material).
func DataKey(ctx context.Context, meta Meta, kms KMSKey, name string, create bool) (*KEK, error) {
	for range 3 {
		rec, err := meta.GetMeta(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("data key: %w", err)
		}
		if rec != nil {
			return openDataKey(ctx, kms, rec)
		}
		if !create {
			return nil, ErrNoDataKey
		}
		kek, rec, err := newDataKey(ctx, kms)
		if err != nil {
			return nil, err
		}
		ok, err := meta.SwapMeta(ctx, name, nil, rec)
		if err != nil {
			return nil, fmt.Errorf("data key: store: %w", err)
		}
		if ok {
			return kek, nil
		}
		// Another process stored its data key first: use that one.
	}
	return nil, errors.New("data key: the stored record keeps changing")
}

// ReencryptDataKey has the KMS decrypt the data key stored under name and
// encrypt it again, so the record is wrapped by the KMS key's current
// version (or the key an alias now names). The data key, and so every
// wrapped key and pseudonym, stays the same. It returns the data key's ID.
func ReencryptDataKey(ctx context.Context, meta Meta, kms KMSKey, name string) (uint32, error) {
	rec, err := meta.GetMeta(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("data key: %w", err)
	}
	if rec == nil {
		return 0, ErrNoDataKey
	}
	plain, id, err := decryptDataKey(ctx, kms, rec)
	if err != nil {
		return 0, err
	}
	defer clear(plain)
	ct, err := kms.Encrypt(ctx, plain)
	if err != nil {
		return 0, kmsError("encrypt", err)
	}
	ok, err := meta.SwapMeta(ctx, name, rec, dataKeyRecord(id, ct))
	if err != nil {
		return 0, fmt.Errorf("data key: store: %w", err)
	}
	if !ok {
		return 0, errors.New("data key: changed by another process during re-encryption; run again")
	}
	return id, nil
}

// CheckKMS checks that kms answers without changing anything: it encrypts a
// constant and decrypts the result, which needs the same permissions as
// running the service.
func CheckKMS(ctx context.Context, kms KMSKey) error {
	probe := []byte("pseudonymizer/kms-probe/v1")
	ct, err := kms.Encrypt(ctx, probe)
	if err != nil {
		return kmsError("encrypt", err)
	}
	pt, err := kms.Decrypt(ctx, ct)
	if err != nil {
		return kmsError("decrypt", err)
	}
	if !bytes.Equal(pt, probe) {
		return errors.New("kms: decrypt returned other bytes than were encrypted")
	}
	return nil
}

func newDataKey(ctx context.Context, kms KMSKey) (*KEK, []byte, error) {
	key, err := NewKey()
	if err != nil {
		return nil, nil, err
	}
	defer clear(key)
	kek, err := NewKEK(key)
	if err != nil {
		return nil, nil, err
	}
	ct, err := kms.Encrypt(ctx, key)
	if err != nil {
		return nil, nil, kmsError("encrypt", err)
	}
	return kek, dataKeyRecord(kek.ID(), ct), nil
}

func openDataKey(ctx context.Context, kms KMSKey, rec []byte) (*KEK, error) {
	plain, _, err := decryptDataKey(ctx, kms, rec)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	return NewKEK(plain)
}

// decryptDataKey has the KMS decrypt a record and checks that the result is
// the data key the record names.
func decryptDataKey(ctx context.Context, kms KMSKey, rec []byte) ([]byte, uint32, error) {
	if len(rec) < 6 || rec[0] != dataKeyVersion {
		return nil, 0, errors.New("data key: malformed record")
	}
	id := binary.BigEndian.Uint32(rec[1:5])
	plain, err := kms.Decrypt(ctx, rec[5:])
	if err != nil {
		return nil, 0, kmsError(fmt.Sprintf("decrypt data key %08x", id), err)
	}
	kek, err := NewKEK(plain)
	if err != nil || kek.ID() != id {
		clear(plain)
		return nil, 0, fmt.Errorf("data key: the KMS returned another key than data key %08x", id)
	}
	return plain, id, nil
}

func dataKeyRecord(id uint32, ciphertext []byte) []byte {
	rec := make([]byte, 5, 5+len(ciphertext))
	rec[0] = dataKeyVersion
	binary.BigEndian.PutUint32(rec[1:5], id)
	return append(rec, ciphertext...)
}

// KMSError is a failed KMS call. Its message is the operation and the
// KMS's own reason (for AWS its error code and message, e.g.
// "DisabledException: … is disabled."), on one line.
type KMSError struct {
	Op  string
	Err error
}

func (e *KMSError) Error() string {
	var api smithy.APIError
	if errors.As(e.Err, &api) {
		return "kms: " + e.Op + ": " + api.ErrorCode() + ": " + oneLine(api.ErrorMessage())
	}
	return "kms: " + e.Op + ": " + oneLine(e.Err.Error())
}

func (e *KMSError) Unwrap() error { return e.Err }

func kmsError(op string, err error) error { return &KMSError{Op: op, Err: err} }

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

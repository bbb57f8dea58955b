package store_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"

	_ "gocloud.dev/secrets/awskms"
	_ "gocloud.dev/secrets/localsecrets"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/kmstest"
)

// memMeta is a store.Meta in memory.
type memMeta struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (m *memMeta) GetMeta(_ context.Context, name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.m[name]), nil
}

func (m *memMeta) SwapMeta(_ context.Context, name string, old, value []byte) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.m[name]
	if ok != (old != nil) || !bytes.Equal(cur, old) {
		return false, nil
	}
	if m.m == nil {
		m.m = map[string][]byte{}
	}
	m.m[name] = bytes.Clone(value)
	return true, nil
}

// mustNotLeak fails if msg spans lines or shows any of the secrets, raw or
// encoded.
func mustNotLeak(t *testing.T, msg string, secrets ...[]byte) {
	t.Helper()
	if strings.Contains(msg, "\n") {
		t.Errorf("message spans lines: %q", msg)
	}
	for _, s := range secrets {
		for _, form := range []string{string(s), hex.EncodeToString(s), base64.StdEncoding.EncodeToString(s), base64.RawStdEncoding.EncodeToString(s), base64.URLEncoding.EncodeToString(s)} {
			if len(form) >= 8 && strings.Contains(msg, form) {
				t.Errorf("message shows secret material: %q", msg)
			}
		}
	}
}

// TestDataKeyWithAWSKMS runs the data key's life against a real AWS KMS
// API (local-kms): creation, unwrap, a disabled key, re-encryption after
// the alias moved to a new key.
func TestDataKeyWithAWSKMS(t *testing.T) {
	srv := kmstest.MustStart(t)
	ctx := context.Background()
	k1 := srv.MustCreateKey(t)
	alias := "alias/pz-" + strings.ReplaceAll(t.Name(), "/", "-")
	srv.MustAlias(t, alias, k1)
	url := "awskms:///" + alias
	kms, err := store.OpenKMSKey(ctx, url)
	if err != nil {
		t.Fatalf("OpenKMSKey: %v", err)
	}
	defer kms.Close()
	if err := store.CheckKMS(ctx, kms); err != nil {
		t.Fatalf("CheckKMS: %v", err)
	}
	meta := &memMeta{}
	name := store.DataKeyName(url)
	kek, err := store.DataKey(ctx, meta, kms, name, true)
	if err != nil {
		t.Fatalf("DataKey: %v", err)
	}
	rec, _ := meta.GetMeta(ctx, name)
	if rec == nil {
		t.Fatal("DataKey stored no record")
	}
	if got := srv.KeyOf(t, rec[5:]); got != k1 {
		t.Fatalf("record encrypted by %s, want %s", got, k1)
	}
	plain := srv.MustDecrypt(t, rec[5:])
	if bytes.Contains(rec, plain) {
		t.Fatal("the record holds the plaintext data key")
	}
	again, err := store.DataKey(ctx, meta, kms, name, true)
	if err != nil || again.ID() != kek.ID() {
		t.Fatalf("second DataKey: %v, id %08x, want %08x", err, again.ID(), kek.ID())
	}
	// A subject key wrapped by the data key unwraps after a reload.
	kr, _ := store.NewKeyring(again)
	w, err := kr.Wrap(bytes.Repeat([]byte{7}, store.KeySize), store.PurposeSubjectKey, []byte("s"))
	if err != nil {
		t.Fatal(err)
	}

	srv.MustDisable(t, k1)
	_, err = store.DataKey(ctx, meta, kms, name, true)
	if err == nil {
		t.Fatal("DataKey with the KMS key disabled: no error")
	}
	// AWS reports a disabled key as DisabledException; local-kms answers
	// a Decrypt that names no key (gocloud names none) with its generic
	// AccessDeniedException.
	if !strings.Contains(err.Error(), "DisabledException") && !strings.Contains(err.Error(), "AccessDeniedException") {
		t.Errorf("error does not carry the KMS's reason: %v", err)
	}
	mustNotLeak(t, err.Error(), plain, rec, rec[5:])
	if err := store.CheckKMS(ctx, kms); err == nil || !strings.Contains(err.Error(), "DisabledException") {
		t.Errorf("CheckKMS with the key disabled: %v", err)
	}
	if after, _ := meta.GetMeta(ctx, name); !bytes.Equal(after, rec) {
		t.Fatal("a failed DataKey changed the stored record")
	}
	srv.MustEnable(t, k1)

	// Rotation behind the alias: re-encryption moves the record to the
	// new key; the data key stays the same.
	k2 := srv.MustCreateKey(t)
	srv.MustAlias(t, alias, k2)
	id, err := store.ReencryptDataKey(ctx, meta, kms, name)
	if err != nil || id != kek.ID() {
		t.Fatalf("ReencryptDataKey: %v, id %08x, want %08x", err, id, kek.ID())
	}
	rec2, _ := meta.GetMeta(ctx, name)
	if got := srv.KeyOf(t, rec2[5:]); got != k2 {
		t.Fatalf("re-encrypted record made by %s, want %s", got, k2)
	}
	srv.MustDisable(t, k1)
	kek2, err := store.DataKey(ctx, meta, kms, name, false)
	if err != nil {
		t.Fatalf("DataKey after re-encryption with the old key disabled: %v", err)
	}
	kr2, _ := store.NewKeyring(kek2)
	if _, err := kr2.Unwrap(w, store.PurposeSubjectKey, []byte("s")); err != nil {
		t.Fatalf("a key wrapped before the rotation: %v", err)
	}
}

// TestDataKeyLocal covers the same with gocloud's base64key:// driver,
// which needs no KMS: a wrong key cannot open the record, and nothing is
// created when create is false.
func TestDataKeyLocal(t *testing.T) {
	ctx := context.Background()
	secret := bytes.Repeat([]byte{0x42}, 32)
	url := "base64key://" + base64.URLEncoding.EncodeToString(secret)
	kms, err := store.OpenKMSKey(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	meta := &memMeta{}
	name := store.DataKeyName(url)
	if _, err := store.DataKey(ctx, meta, kms, name, false); !errors.Is(err, store.ErrNoDataKey) {
		t.Fatalf("DataKey(create=false) on empty meta: %v, want ErrNoDataKey", err)
	}
	if len(meta.m) != 0 {
		t.Fatal("DataKey(create=false) stored something")
	}
	if _, err := store.DataKey(ctx, meta, kms, name, true); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(name, base64.URLEncoding.EncodeToString(secret)) {
		t.Fatal("the record's name shows the URL")
	}
	other, err := store.OpenKMSKey(ctx, "base64key://"+base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := meta.GetMeta(ctx, name)
	_, err = store.DataKey(ctx, meta, other, name, true)
	if err == nil {
		t.Fatal("another KMS key opened the data key")
	}
	mustNotLeak(t, err.Error(), secret, rec)
	rec[len(rec)-1] ^= 1
	_, _ = meta.SwapMeta(ctx, name, mustGet(t, meta, name), rec)
	if _, err := store.DataKey(ctx, meta, kms, name, true); err == nil {
		t.Fatal("a tampered record opened")
	}
}

func mustGet(t *testing.T, m store.Meta, name string) []byte {
	t.Helper()
	v, err := m.GetMeta(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestOpenKMSKeyErrorsHideURL: a URL may be a secret (base64key://); the
// errors of opening one never show it.
func TestOpenKMSKeyErrorsHideURL(t *testing.T) {
	for _, url := range []string{
		"base64key://c2VjcmV0LWJ1dC10b28tc2hvcnQ",
		"nosuchkms://secret-key-name/path?token=hunter2hunter2",
		"no scheme at all hunter2hunter2",
	} {
		_, err := store.OpenKMSKey(context.Background(), url)
		if err == nil {
			t.Errorf("OpenKMSKey(%q): no error", url)
			continue
		}
		for _, part := range []string{"c2VjcmV0LWJ1dC10b28tc2hvcnQ", "secret-key-name", "hunter2hunter2"} {
			if strings.Contains(err.Error(), part) {
				t.Errorf("OpenKMSKey error shows the URL: %v", err)
			}
		}
	}
}

// TestOpenKMSKeyAzureNeedsVersion: Key Vault decrypts with the version the
// URL names (the newest if none), so an unversioned URL is refused before
// the key's next version could strand the data key.
func TestOpenKMSKeyAzureNeedsVersion(t *testing.T) {
	for _, url := range []string{"azurekeyvault://v.vault.azure.net/keys/k", "azurekeyvault://v.vault.azure.net/keys/k/"} {
		_, err := store.OpenKMSKey(context.Background(), url)
		if err == nil || !strings.Contains(err.Error(), "must name the key version") {
			t.Errorf("OpenKMSKey(%q): %v, want a demand for the version", url, err)
		}
	}
	// With a version the check passes; this test binary has no Azure
	// driver, so opening then fails for that reason.
	_, err := store.OpenKMSKey(context.Background(), "azurekeyvault://v.vault.azure.net/keys/k/0123abcd")
	if err == nil || !strings.Contains(err.Error(), "no driver registered") {
		t.Errorf("OpenKMSKey with a version: %v, want no driver registered", err)
	}
}

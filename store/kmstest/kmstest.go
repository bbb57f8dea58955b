// Package kmstest runs a real AWS KMS API for tests: local-kms
// (github.com/nsmithuk/local-kms), an AWS KMS emulator written in Go, built
// from the Go module cache (or the module proxy) on first use and started
// on a free port of 127.0.0.1 with its data in the test's temporary
// directory.
//
// When it cannot be built or started the test is skipped with the reason,
// unless PSEUDONYMIZER_REQUIRE_KMS=1, in which case it fails.
//
//	srv := kmstest.MustStart(t) // also points the AWS SDK at it (t.Setenv)
//	keyID := srv.MustCreateKey(t)
//	url := "awskms:///" + keyID
package kmstest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

const (
	// Module is the local-kms module and version the tests build.
	Module = "github.com/nsmithuk/local-kms@v0.0.0-20260228092603-2a5e92d09ab6"
	// EnvRequire names the environment variable that, set to 1, turns a
	// local-kms that cannot be built or started from a skip into a failure.
	EnvRequire = "PSEUDONYMIZER_REQUIRE_KMS"
	// Region is the region the emulator and the clients use.
	Region = "eu-west-2"
)

var build struct {
	once sync.Once
	path string
	err  error
}

// binary builds local-kms once per process into the user's cache
// directory, where later runs find it.
func binary() (string, error) {
	build.once.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			cache = os.TempDir()
		}
		dir := filepath.Join(cache, "pseudonymizer-test", "local-kms-2a5e92d09ab6")
		build.path = filepath.Join(dir, "local-kms")
		if _, err := os.Stat(build.path); err == nil {
			return
		}
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			goBin = "go"
		}
		cmd := exec.Command(goBin, "install", Module)
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
		cmd.Dir = os.TempDir() // outside any module: go install pkg@version
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			build.err = fmt.Errorf("go install %s: %v: %s", Module, err, bytes.TrimSpace(out.Bytes()))
		}
	})
	return build.path, build.err
}

// Server is a running local-kms.
type Server struct {
	// Endpoint is its URL, e.g. http://127.0.0.1:41234.
	Endpoint string
	// Client talks to it.
	Client *kms.Client
}

// MustStart builds (once) and starts local-kms for the test, stops it at
// cleanup, and points the AWS SDK of this process at it through the
// environment (AWS_ENDPOINT_URL_KMS, AWS_REGION and dummy credentials), so
// awskms:// URLs reach it. Tests that call it cannot run in parallel.
func MustStart(t *testing.T) *Server {
	t.Helper()
	bin, err := binary()
	if err != nil {
		skipOrFail(t, "local-kms cannot be built: %v", err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatalf("kmstest: free port: %v", err)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "KMS_DATA_PATH="+filepath.Join(dir, "data"),
		"KMS_SEED_PATH="+filepath.Join(dir, "no-seed.yaml"), "KMS_REGION="+Region, "KMS_ACCOUNT_ID=111122223333")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		skipOrFail(t, "local-kms cannot be started: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	s := &Server{Endpoint: "http://127.0.0.1:" + strconv.Itoa(port)}
	s.Client = kms.New(kms.Options{
		Region:       Region,
		BaseEndpoint: aws.String(s.Endpoint),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "test", SecretAccessKey: "test"}, nil
		}),
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := s.Client.ListKeys(ctx, &kms.ListKeysInput{})
		cancel()
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			t.Fatalf("kmstest: local-kms exited: %v: %s", werr, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("kmstest: local-kms does not answer at %s: %v", s.Endpoint, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Setenv("AWS_ENDPOINT_URL_KMS", s.Endpoint)
	t.Setenv("AWS_REGION", Region)
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "no-aws-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "no-aws-credentials"))
	return s
}

// MustCreateKey creates a symmetric encryption key and returns its ARN.
func (s *Server) MustCreateKey(t testing.TB) string {
	t.Helper()
	out, err := s.Client.CreateKey(context.Background(), &kms.CreateKeyInput{Description: aws.String(t.Name())})
	if err != nil {
		t.Fatalf("kmstest: CreateKey: %v", err)
	}
	return aws.ToString(out.KeyMetadata.Arn)
}

// MustAlias points alias (alias/…) at keyID, creating the alias if needed.
func (s *Server) MustAlias(t testing.TB, alias, keyID string) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Client.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(keyID)}); err == nil {
		return
	}
	if _, err := s.Client.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(keyID)}); err != nil {
		t.Fatalf("kmstest: CreateAlias: %v", err)
	}
}

// MustDisable disables a key; MustEnable enables it again.
func (s *Server) MustDisable(t testing.TB, keyID string) {
	t.Helper()
	if _, err := s.Client.DisableKey(context.Background(), &kms.DisableKeyInput{KeyId: aws.String(keyID)}); err != nil {
		t.Fatalf("kmstest: DisableKey: %v", err)
	}
}

// MustEnable enables a disabled key.
func (s *Server) MustEnable(t testing.TB, keyID string) {
	t.Helper()
	if _, err := s.Client.EnableKey(context.Background(), &kms.EnableKeyInput{KeyId: aws.String(keyID)}); err != nil {
		t.Fatalf("kmstest: EnableKey: %v", err)
	}
}

// MustDecrypt has the KMS decrypt ciphertext (whatever key made it).
func (s *Server) MustDecrypt(t testing.TB, ciphertext []byte) []byte {
	t.Helper()
	out, err := s.Client.Decrypt(context.Background(), &kms.DecryptInput{CiphertextBlob: ciphertext})
	if err != nil {
		t.Fatalf("kmstest: Decrypt: %v", err)
	}
	return out.Plaintext
}

// KeyOf returns the ARN of the key that made ciphertext.
func (s *Server) KeyOf(t testing.TB, ciphertext []byte) string {
	t.Helper()
	out, err := s.Client.Decrypt(context.Background(), &kms.DecryptInput{CiphertextBlob: ciphertext})
	if err != nil {
		t.Fatalf("kmstest: Decrypt: %v", err)
	}
	return aws.ToString(out.KeyId)
}

func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("kmstest: "+format+" (%s=1)", append(args, EnvRequire)...)
	}
	t.Skipf("kmstest: "+format+" (set %s=1 to fail instead)", append(args, EnvRequire)...)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

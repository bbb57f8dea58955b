package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/lookup"
)

// TestLookupTokenCommand: the token is printed once, on the first line,
// and the entry printed with it admits it.
func TestLookupTokenCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"lookup-token", "--name", "shop", "--systems", "meta, google-analytics", "--rate", "50"}, &out, &errb); err != nil {
		t.Fatalf("lookup-token: %v (%s)", err, errb.String())
	}
	token, rest, _ := strings.Cut(out.String(), "\n")
	if !strings.HasPrefix(token, lookup.TokenPrefix) || strings.Count(out.String(), token) != 1 {
		t.Fatalf("first line %q is not the token (or it is printed twice)", token)
	}
	toks, err := lookup.ParseTokens([]byte(rest))
	if err != nil {
		t.Fatalf("the printed entry does not load: %v\n%s", err, rest)
	}
	sum := sha256.Sum256([]byte(token))
	if len(toks) != 1 || toks[0].Name != "shop" || toks[0].SHA256 != hex.EncodeToString(sum[:]) ||
		strings.Join(toks[0].Systems, ",") != "meta,google-analytics" || toks[0].Rate != 50 {
		t.Errorf("entry %+v", toks)
	}
	for _, args := range [][]string{{"--systems", "meta"}, {"--name", "shop"}, {"--name", "a b", "--systems", "meta"}} {
		err := run(context.Background(), append([]string{"lookup-token"}, args...), io.Discard, io.Discard)
		if err == nil || exitCode(err) != 2 {
			t.Errorf("lookup-token %v: %v, want a usage error", args, err)
		}
	}
}

// testPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all signed by the CA, and returns their paths and the CA
// pool.
type testPKI struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
	client                    tls.Certificate
}

func newTestPKI(t *testing.T, dir string) *testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, usage x509.ExtKeyUsage, ip net.IP) ([]byte, *ecdsa.PrivateKey) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "test"}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature}
		if ip != nil {
			tmpl.IPAddresses = []net.IP{ip}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	pemOf := func(typ string, b []byte) string { return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b})) }
	keyPEM := func(k *ecdsa.PrivateKey) string {
		b, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pemOf("EC PRIVATE KEY", b)
	}
	srvDER, srvKey := issue(2, x509.ExtKeyUsageServerAuth, net.ParseIP("127.0.0.1"))
	cliDER, cliKey := issue(3, x509.ExtKeyUsageClientAuth, nil)
	p := &testPKI{
		caFile:   writeFile(t, dir, "ca.pem", pemOf("CERTIFICATE", caDER)),
		certFile: writeFile(t, dir, "server.pem", pemOf("CERTIFICATE", srvDER)),
		keyFile:  writeFile(t, dir, "server.key", keyPEM(srvKey)),
		pool:     x509.NewCertPool(),
	}
	p.pool.AddCert(ca)
	cli, err := tls.X509KeyPair([]byte(pemOf("CERTIFICATE", cliDER)), []byte(keyPEM(cliKey)))
	if err != nil {
		t.Fatal(err)
	}
	p.client = cli
	return p
}

// TestServiceLookupAPI runs `pseudonymizer run` with the lookup API over
// mTLS on its own port: a client with a certificate and a token gets
// pseudonyms; one without a certificate is refused in the handshake; the
// metrics port does not serve the API; the lookup metrics count the
// request by token, system and code, and nothing raw reaches the metrics
// or the log.
func TestServiceLookupAPI(t *testing.T) {
	kc := kafkatest.New(t)
	kc.CreateTopics(t, 2, nil, kc.Topic(config.Default().Topics.Orders), kc.Topic(config.Default().Topics.Forget))
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	const token = "pzl_service-test-token"
	sum := sha256.Sum256([]byte(token))
	tokens := writeFile(t, dir, "tokens.yaml", "- {name: shop, sha256: "+hex.EncodeToString(sum[:])+", systems: [meta], rate: 100}\n")
	addr, lookupAddr := freeAddr(t), freeAddr(t)
	cfg := writeFile(t, dir, "config.yaml", kafkaYAML(kc)+
		"store: {path: "+filepath.Join(dir, "keys.db")+"}\n"+
		"keys: {kek_file: "+writeFile(t, dir, "kek.b64", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")+"}\n"+
		"http: {listen: '"+addr+"'}\nlog: {level: debug, format: json}\n"+
		"lookup: {listen: '"+lookupAddr+"', tokens_file: "+tokens+", tls: {cert_file: "+pki.certFile+", key_file: "+pki.keyFile+", client_ca_file: "+pki.caFile+"}}\n"+
		validSystems)
	logs, stop := startRun(t, cfg, addr)

	const raw = "CUSTOMER-RAW-90210"
	body := `{"customer_id":"` + raw + `","values":{"order_id":"ORDER-RAW-1"},"systems":["meta"]}`
	client := func(cert bool) *http.Client {
		tc := &tls.Config{RootCAs: pki.pool}
		if cert {
			tc.Certificates = []tls.Certificate{pki.client}
		}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	}
	req := func(c *http.Client, url string) (*http.Response, error) {
		r, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		r.Header.Set("Authorization", "Bearer "+token)
		return c.Do(r)
	}
	resp, err := req(client(true), "https://"+lookupAddr+lookup.Path)
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(rb), `"meta":{"customer_id":"`) {
		t.Fatalf("lookup over mTLS: %d %s", resp.StatusCode, rb)
	}
	if resp, err := req(client(false), "https://"+lookupAddr+lookup.Path); err == nil {
		resp.Body.Close()
		t.Errorf("a client without a certificate got %d, want a refused handshake", resp.StatusCode)
	}
	if resp, err := req(http.DefaultClient, "http://"+addr+lookup.Path); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the metrics port answers the lookup path: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}
	_, metrics := httpGet("http://" + addr + "/metrics")
	if !strings.Contains(metrics, `pseudonymizer_lookup_requests_total{code="200",system="meta",token="shop"} 1`) {
		t.Errorf("/metrics does not count the lookup:\n%s", grepLines(metrics, "pseudonymizer_lookup"))
	}
	if !strings.Contains(metrics, "pseudonymizer_lookup_request_duration_seconds_bucket") {
		t.Errorf("/metrics has no lookup latency histogram")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{metrics, logs.String()} {
		if strings.Contains(s, raw) || strings.Contains(s, "ORDER-RAW-1") || strings.Contains(s, token) {
			t.Fatalf("a raw ID or the token in the metrics or the log")
		}
	}
	if !strings.Contains(logs.String(), "serving the lookup API") {
		t.Errorf("the log does not say the lookup API is served")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestLookupStartupErrors: a bad lookup section stops start-up with one
// line naming it.
func TestLookupStartupErrors(t *testing.T) {
	dir := t.TempDir()
	kek := writeFile(t, dir, "kek.b64", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
	base := "keys: {kek_file: " + kek + "}\nstore: {path: " + filepath.Join(dir, "keys.db") + "}\nhttp: {listen: '127.0.0.1:9464'}\n" + validSystems
	good := writeFile(t, dir, "tokens.yaml", "- {name: shop, sha256: "+strings.Repeat("ab", 32)+", systems: [meta], rate: 10}\n")
	unknown := writeFile(t, dir, "unknown.yaml", "- {name: shop, sha256: "+strings.Repeat("ab", 32)+", systems: [tiktok], rate: 10}\n")
	readable := writeFile(t, dir, "readable.yaml", "[]\n")
	if err := os.Chmod(readable, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, lookup, want string }{
		{"metrics port", "{listen: '127.0.0.1:9464', tokens_file: " + good + "}", "must differ from http.listen"},
		{"metrics port, wildcard", "{listen: ':9464', tokens_file: " + good + "}", "must differ from http.listen"},
		{"no tokens file", "{listen: '127.0.0.1:9465'}", "lookup.tokens_file"},
		{"readable tokens file", "{listen: '127.0.0.1:9465', tokens_file: " + readable + "}", "chmod 600"},
		{"unknown system", "{listen: '127.0.0.1:9465', tokens_file: " + unknown + "}", `system "tiktok" is not configured`},
		{"cert without key", "{listen: '127.0.0.1:9465', tokens_file: " + good + ", tls: {cert_file: x.pem}}", "both lookup.tls.cert_file"},
		{"missing cert", "{listen: '127.0.0.1:9465', tokens_file: " + good + ", tls: {cert_file: x.pem, key_file: x.key}}", "lookup.tls"},
		{"tokens without listen", "{tokens_file: " + good + "}", "need lookup.listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeFile(t, t.TempDir(), "config.yaml", base+"lookup: "+tc.lookup+"\n")
			err := run(context.Background(), []string{"run", "--config", cfg, "--check-config"}, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v, want one line naming %q", err, tc.want)
			}
		})
	}
}

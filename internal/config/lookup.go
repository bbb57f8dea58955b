package config

import (
	"errors"
	"net"
	"strings"
)

// Lookup configures the lookup API (package lookup): the pseudonyms of
// an event for a shop's conversion pixels. It is off unless Listen is set.
type Lookup struct {
	// Listen is the API's address (host:port); empty disables the API. It
	// must differ from http.listen: the API is never served on the
	// metrics port.
	Listen string `yaml:"listen"`
	// TokensFile is the YAML list of callers, {name, sha256, systems,
	// rate}; required with Listen. It must not be readable by group or
	// others (chmod 600).
	TokensFile string `yaml:"tokens_file"`
	// TLS serves the API over TLS (and mTLS with ClientCAFile).
	TLS LookupTLS `yaml:"tls"`
}

// LookupTLS is the lookup API's TLS configuration.
type LookupTLS struct {
	// CertFile and KeyFile are the server's PEM certificate (chain) and
	// key; both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile, if set, requires client certificates signed by one of
	// its PEM CAs (mTLS); it needs CertFile and KeyFile.
	ClientCAFile string `yaml:"client_ca_file"`
}

// validateLookup checks the lookup section.
func (c *Config) validateLookup() error {
	l := c.Lookup
	if l.Listen == "" {
		if l.TokensFile != "" || l.TLS != (LookupTLS{}) {
			return errors.New("config: lookup.tokens_file and lookup.tls need lookup.listen (the lookup API is off without it)")
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(l.Listen); err != nil {
		return errors.New("config: lookup.listen must be host:port")
	}
	switch {
	case sameAddr(l.Listen, c.HTTP.Listen):
		return errors.New("config: lookup.listen must differ from http.listen: the lookup API is never served on the metrics port")
	case l.TokensFile == "":
		return errors.New("config: lookup.listen needs lookup.tokens_file (create entries with pseudonymizer lookup-token)")
	case (l.TLS.CertFile == "") != (l.TLS.KeyFile == ""):
		return errors.New("config: set both lookup.tls.cert_file and lookup.tls.key_file, or neither")
	case l.TLS.ClientCAFile != "" && l.TLS.CertFile == "":
		return errors.New("config: lookup.tls.client_ca_file (mTLS) needs lookup.tls.cert_file and key_file")
	}
	return nil
}

// sameAddr reports whether two listen addresses share a port on an
// overlapping host (an empty or unspecified host overlaps every host).
func sameAddr(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil {
		return a == b
	}
	if pa != pb {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return wild(ha) || wild(hb) || strings.EqualFold(ha, hb)
}

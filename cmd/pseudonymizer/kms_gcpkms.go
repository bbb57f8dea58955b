//go:build !no_gcpkms

package main

// The gcpkms:// driver for keys.kek_url; build with -tags no_gcpkms to leave it
// (and its SDK) out of the binary.
import _ "gocloud.dev/secrets/gcpkms"

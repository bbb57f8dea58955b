//go:build !no_awskms

package main

// The awskms:// driver for keys.kek_url; build with -tags no_awskms to leave it
// (and its SDK) out of the binary.
import _ "gocloud.dev/secrets/awskms"

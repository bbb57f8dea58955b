//go:build !no_azurekeyvault

package main

// The azurekeyvault:// driver for keys.kek_url; build with -tags no_azurekeyvault to leave it
// (and its SDK) out of the binary.
import _ "gocloud.dev/secrets/azurekeyvault"

package main

// The base64key:// driver for keys.kek_url: a local key in the URL itself,
// for tests and the demo only (it is as secret as PSEUDONYMIZER_KEK).
import _ "gocloud.dev/secrets/localsecrets"

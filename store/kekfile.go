package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
)

// ErrKEKFileReadable is returned by ReadKEKFile for a KEK file that users
// other than its owner may access.
var ErrKEKFileReadable = errors.New("KEK file is accessible by group or others")

// maxKEKFileSize bounds what ReadKEKFile reads: base64 of 32 bytes and
// some whitespace.
const maxKEKFileSize = 4096

// ReadKEKFile reads and parses a KEK file (base64 of 32 bytes). Unless
// allowReadable is set it refuses a file whose mode grants any access to
// group or others (on systems with POSIX permissions), naming the file, its
// mode and the fix; the mode is checked on the opened file, so the file
// that is read is the file that was checked. The error never contains key
// material.
func ReadKEKFile(path string, allowReadable bool) (*KEK, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && !allowReadable && runtime.GOOS != "windows" {
		return nil, fmt.Errorf("%s has mode %04o: %w; run chmod 600 %s (or set keys.allow_readable_kek_files: true to accept it)",
			path, perm, ErrKEKFileReadable, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKEKFileSize+1))
	defer clear(b)
	if err != nil {
		return nil, err
	}
	if len(b) > maxKEKFileSize {
		return nil, fmt.Errorf("%s: %w", path, errors.New("kek: file too large for a base64 KEK"))
	}
	k, err := ParseKEK(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

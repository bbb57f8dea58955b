package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// NonConfigEnv lists the PSEUDONYMIZER_* environment variables that are
// not configuration keys but are read elsewhere; names ending in "*" are
// prefixes. Any other PSEUDONYMIZER_* variable that names no configuration
// key is an error, so that a misspelled override is not silently ignored.
var NonConfigEnv = []string{
	EnvPrefix + "KEK",           // the active KEK itself (keys.kek_file's alternative)
	EnvPrefix + "FAILPOINT",     // crash injection for the fault tests
	EnvPrefix + "BENCH_WORKER",  // set by cmd/pseudonymizer-bench for its copy workers
	EnvPrefix + "PROFILE",       // set by cmd/pseudonymizer-bench: profile `run`
	EnvPrefix + "REQUIRE_*",     // tests: a missing PostgreSQL, Kafka broker, … fails instead of skipping
	EnvPrefix + "INTEGRATION",   // tests: run the integration suite
	EnvPrefix + "INTEGRATION_*", // tests: integration suite options
	EnvPrefix + "TEST_*",        // tests: PostgreSQL, Kafka and verbosity settings
}

func nonConfig(name string) bool {
	for _, n := range NonConfigEnv {
		if p, ok := strings.CutSuffix(n, "*"); ok && strings.HasPrefix(name, p) || name == n {
			return true
		}
	}
	return false
}

// applyEnv overrides scalar and list fields from PSEUDONYMIZER_<PATH>
// variables, where PATH is the YAML path in upper case joined by "_"
// (PSEUDONYMIZER_KAFKA_BROKERS="a:9092,b:9092",
// PSEUDONYMIZER_STORE_POSTGRES=...). PSEUDONYMIZER_KEK sets the KEK itself.
// A store set from the environment replaces the file's other store.
func applyEnv(cfg *Config, environ []string) error {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			env[k] = v
		}
	}
	if v, ok := env[EnvPrefix+"KEK"]; ok {
		cfg.Keys.KEK = v
	}
	known := map[string]bool{}
	if err := walkEnv(reflect.ValueOf(cfg).Elem(), strings.TrimSuffix(EnvPrefix, "_"), env, known); err != nil {
		return err
	}
	var unknown []string
	for k := range env {
		if !known[k] && !nonConfig(k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		var names []string
		for k := range known {
			names = append(names, k)
		}
		hint := ""
		if best := closest(unknown[0], names); best != "" {
			hint = " (did you mean " + best + "?)"
		}
		return fmt.Errorf("config: unknown environment variable %s%s; configuration keys map to %s<SECTION>_<KEY>",
			strings.Join(unknown, ", "), hint, EnvPrefix)
	}
	// Likewise an active KEK given in the environment replaces the file's
	// active KEK of the other kind.
	_, kekSet := env[EnvPrefix+"KEK"]
	_, fileSet := env[EnvPrefix+"KEYS_KEK_FILE"]
	_, urlSet := env[EnvPrefix+"KEYS_KEK_URL"]
	switch {
	case urlSet && !kekSet && !fileSet && cfg.Keys.KEKURL != "":
		cfg.Keys.KEKFile = ""
	case (kekSet || fileSet) && !urlSet && (cfg.Keys.KEK != "" || cfg.Keys.KEKFile != ""):
		cfg.Keys.KEKURL = ""
	}
	pg, pgSet := env[EnvPrefix+"STORE_POSTGRES"]
	path, pathSet := env[EnvPrefix+"STORE_PATH"]
	switch {
	case pgSet && !pathSet && pg != "":
		cfg.Store.Path = ""
	case pathSet && !pgSet && path != "":
		cfg.Store.Postgres = ""
	}
	return nil
}

// walkEnv sets v's fields from env and records every variable name it
// knows in known.
func walkEnv(v reflect.Value, prefix string, env map[string]string, known map[string]bool) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		name := prefix + "_" + strings.ToUpper(tag)
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && fv.Type() != durationType {
			if err := walkEnv(fv, name, env, known); err != nil {
				return err
			}
			continue
		}
		known[name] = true
		raw, ok := env[name]
		if !ok {
			continue
		}
		if err := setFromString(fv, raw); err != nil {
			return fmt.Errorf("config: environment %s: %w", name, err)
		}
	}
	return nil
}

func setFromString(fv reflect.Value, raw string) error {
	switch fv.Interface().(type) {
	case time.Duration:
		d, err := time.ParseDuration(raw)
		if err != nil {
			return err
		}
		fv.SetInt(int64(d))
		return nil
	}
	switch fv.Kind() {
	case reflect.String:
		fv.SetString(raw)
	case reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return err
		}
		fv.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return err
		}
		fv.SetInt(n)
	case reflect.Slice:
		if fv.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("cannot be set from the environment")
		}
		var parts []string
		for _, p := range strings.Split(raw, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		fv.Set(reflect.ValueOf(parts))
	default:
		// Maps (systems) are configured in the file only.
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}

package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
)

// runSchema is `pseudonymizer schema`: it prints one system's output schema.
func runSchema(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("schema", "schema --config FILE --system NAME", "Prints the Avro schema (JSON) of a system's output records.")
	path := fs.String("config", "", "configuration file (YAML)")
	system := fs.String("system", "", "marketing system name")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	if *system == "" {
		return fmt.Errorf("--system NAME is required")
	}
	cfg, err := loadSchemaConfig(*path)
	if err != nil {
		return err
	}
	_, plan, err := compilePlan(&cfg)
	if err != nil {
		return err
	}
	i := slices.Index(plan.Systems(), *system)
	if i < 0 {
		return fmt.Errorf("no system %q in the configuration (have: %s)", *system, strings.Join(plan.Systems(), ", "))
	}
	fmt.Fprintln(stdout, plan.OutputSchema(i).String())
	return nil
}

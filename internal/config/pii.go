package config

import (
	"fmt"
	"strings"

	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/pii"
)

// PII configures the guard against identifying data inside the fields a
// system keeps (processor/pii.go). Each system's mode is its own
// systems.<name>.pii: redact (the default), drop or off.
type PII struct {
	// Region is the ISO 3166-1 alpha-2 region whose national phone number
	// format is recognised (international numbers are, whatever the
	// region). Default DE.
	Region string `yaml:"region"`
	// Patterns are named custom patterns (regular expressions that start
	// with a literal of two or more characters); matches are redacted as
	// [redacted:<name>].
	Patterns []pii.Pattern `yaml:"patterns"`
	// IdentifierFields are the input fields whose raw values must not
	// appear inside a string a system keeps (unless it keeps the field
	// itself). Default: event_id, order_id, customer_id and the fields
	// whose names suggest personal data (email, phone,
	// shipping_address.line1).
	IdentifierFields []string `yaml:"identifier_fields"`
	// QuarantineTopic, if set, receives a sample of the original records
	// in which the guard found something (opt-in; it holds raw personal
	// data, like the dead-letter topics).
	QuarantineTopic string `yaml:"quarantine_topic"`
	// QuarantinePerBatch caps the records quarantined per batch. Default
	// 10.
	QuarantinePerBatch int `yaml:"quarantine_per_batch"`
}

// validatePII checks the guard's settings and every system's mode; the
// identifier fields are checked against the schema when the processor is
// built (processor.CheckPII).
func (c *Config) validatePII() error {
	for _, p := range c.Policies() {
		if err := processor.CheckPIIMode(p.PII); err != nil {
			return fmt.Errorf("config: systems.%s.%w", p.System, err)
		}
	}
	if c.PII.QuarantinePerBatch < 0 {
		return fmt.Errorf("config: pii.quarantine_per_batch must not be negative")
	}
	if _, err := pii.New(c.piiDetectorConfig()); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if t := c.PII.QuarantineTopic; t != "" && strings.TrimSpace(t) != t {
		return fmt.Errorf("config: pii.quarantine_topic %q has leading or trailing spaces", t)
	}
	return nil
}

func (c *Config) piiDetectorConfig() pii.Config {
	return pii.Config{Region: c.PII.Region, Patterns: c.PII.Patterns}
}

// PIIConfig returns the processor's PII guard configuration.
func (c *Config) PIIConfig() (processor.PIIConfig, error) {
	det, err := pii.New(c.piiDetectorConfig())
	if err != nil {
		return processor.PIIConfig{}, fmt.Errorf("config: %w", err)
	}
	return processor.PIIConfig{
		Detector:           det,
		IdentifierFields:   c.PII.IdentifierFields,
		QuarantineTopic:    c.PII.QuarantineTopic,
		QuarantinePerBatch: c.PII.QuarantinePerBatch,
	}, nil
}

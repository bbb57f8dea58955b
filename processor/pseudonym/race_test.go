//go:build race

package pseudonym

// raceEnabled reports that the race detector is on: it makes allocations
// of its own, so allocation counts are not asserted.
const raceEnabled = true

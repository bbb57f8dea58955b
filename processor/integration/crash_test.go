//go:build linux

package integration

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCrashesAndRebalances SIGKILLs instances at random points while orders
// and forget requests stream in, with up to four instances in the group
// joining, crashing and coming back (rebalances mid-transaction), plus one
// clean bounce. Every killed instance restarts with its transactional ID,
// which fences its previous incarnation.
func TestCrashesAndRebalances(t *testing.T) {
	w := MustNewWorld(t)
	names := []string{"pz-a", "pz-b", "pz-c", "pz-d"}
	w.MustStart(t, names[0])
	w.MustStart(t, names[1])
	done := w.Stream(t, stream{n: 3000, forgetEvery: 60, chunk: 25, pause: 150 * time.Millisecond})

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	kills, bounces := 0, 0
	// The schedule: grow the group to four, then crash at random.
	actions := []string{"join", "kill", "join", "kill", "bounce", "kill", "kill"}
	for _, a := range actions {
		time.Sleep(time.Duration(800+rng.IntN(2200)) * time.Millisecond)
		var running, stopped []string
		for _, n := range names {
			if in := w.instance(n); in != nil && in.running() {
				running = append(running, n)
			} else {
				stopped = append(stopped, n)
			}
		}
		switch a {
		case "join":
			if len(stopped) > 0 {
				w.MustStart(t, stopped[0])
				t.Logf("%s joined (%d running)", stopped[0], len(running)+1)
			}
		case "kill":
			victim := running[rng.IntN(len(running))]
			w.instance(victim).MustKill(t)
			kills++
			t.Logf("SIGKILL %s", victim)
			// Restart after a random pause: the transaction it had open
			// is aborted when the new incarnation initializes its
			// producer ID, or by the transaction timeout.
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
			w.MustStart(t, victim)
		case "bounce":
			victim := running[rng.IntN(len(running))]
			w.instance(victim).MustStop(t)
			bounces++
			t.Logf("SIGTERM %s", victim)
			w.MustStart(t, victim)
		}
	}
	<-done
	w.MustAwaitConsumed(t, 3*time.Minute)
	w.MustStopAll(t)
	w.MustVerify(t)
	if kills < 3 {
		t.Errorf("%d SIGKILLs, want at least 3", kills)
	}
	orders, forgets := w.counts()
	t.Logf("%d SIGKILLs, %d clean bounces, %d orders, %d forget requests", kills, bounces, orders, forgets)
}

// TestFailpoints crashes the service (exit 137, as if SIGKILLed) at each
// failpoint of a batch: in the forget lane after the store committed a
// forget, before and after EndTxn; in the order lane after new keys were
// committed, with the guard held before EndTxn, and after EndTxn returned. Each phase produces fresh orders and forget requests, so the
// failpoint is reached; one instance runs alone, so it owns every
// partition. Then two healthy instances finish the work.
func TestFailpoints(t *testing.T) {
	w := MustNewWorld(t)
	const name = "pz-fp"
	for _, fp := range []string{"after-forget:1", "forget-before-commit:1", "forget-after-commit:1", "after-resolve:2", "before-commit:2", "after-commit:2", "after-resolve:1", "before-commit:1", "after-commit:1"} {
		w.MustProduce(t, 400, 20)
		in := w.MustStart(t, name, "PSEUDONYMIZER_FAILPOINT="+fp)
		if got, want := in.MustWaitExit(t, 90*time.Second), 137; got != want {
			t.Fatalf("failpoint %s: exit code %d, want %d", fp, got, want)
		}
		point, hit, _ := strings.Cut(fp, ":")
		if want := fmt.Sprintf("failpoint %s hit %s", point, hit); !in.logContains(want) {
			t.Fatalf("failpoint %s: the log does not say %q", fp, want)
		}
		t.Logf("crashed at %s", fp)
	}
	w.MustProduce(t, 400, 20)
	w.MustStart(t, name)
	w.MustStart(t, "pz-ok")
	w.MustAwaitConsumed(t, 2*time.Minute)
	w.MustStopAll(t)
	w.MustVerify(t)
}

// TestZombieFenced stalls one of three instances (SIGSTOP) while the others
// run, then resumes it (SIGCONT), twice: once past the session timeout only
// (its transaction is still open at the broker: the group generation must
// fence its offset commit), once past the session and transaction timeouts
// (the broker aborted its transaction and bumped its epoch). Either way it
// publishes nothing twice, rejoins and works on.
func TestZombieFenced(t *testing.T) {
	w := MustNewWorld(t)
	a := w.MustStart(t, "pz-a")
	z := w.MustStart(t, "pz-z")
	w.MustStart(t, "pz-c")
	a.MustAwaitReadyz(t, 200, time.Minute)
	z.MustAwaitReadyz(t, 200, time.Minute)
	done := w.Stream(t, stream{n: 3000, forgetEvery: 100, chunk: 20, pause: 100 * time.Millisecond})
	for _, stall := range []time.Duration{sessionTimeout + 2*time.Second, sessionTimeout + transactionTimeout + 3*time.Second} {
		time.Sleep(2 * time.Second)
		z.signal(syscall.SIGSTOP)
		t.Logf("SIGSTOP pz-z for %s", stall)
		time.Sleep(stall)
		z.signal(syscall.SIGCONT)
		t.Log("SIGCONT pz-z")
		// It must come back on its own: rejoin the group and be ready.
		z.MustAwaitReadyz(t, 200, time.Minute)
	}
	<-done
	// More work after the zombie is back, so it commits again.
	w.MustProduce(t, 200, 50)
	w.MustAwaitConsumed(t, 3*time.Minute)
	if !z.running() {
		t.Errorf("the zombie exited instead of rejoining")
	}
	w.MustStopAll(t)
	w.MustVerify(t)
}

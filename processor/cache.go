package processor

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"math"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/store"
)

// subject refers to what the processor knows about one customer: the key it
// derives pseudonyms from, its customer pseudonyms and its newest
// tombstone. It points into a generation of the subject cache (or the
// batch's scratch generation, for subjects that are not cached), and stays
// valid until the batch that obtained it has ended (wipeEvicted).
type subject struct {
	g *generation
	i int32
}

// valid reports whether s refers to an entry.
func (s subject) valid() bool { return s.g != nil }

// key returns the subject key, or nil if the subject has none.
func (s subject) key() []byte {
	slot := s.g.slot(s.i)
	if slot[s.g.flagsAt]&flagKey == 0 {
		return nil
	}
	return slot[:store.KeySize:store.KeySize]
}

// hash returns the subject's keyed hash.
func (s subject) hash() *store.SubjectHash { return s.g.hash(s.i) }

// forgottenAt returns the newest tombstone's time in ms since the epoch,
// and whether there is one.
func (s subject) forgottenAt() (int64, bool) {
	if s.g.slot(s.i)[s.g.flagsAt]&flagTomb == 0 {
		return 0, false
	}
	return s.g.tombs[s.i], true
}

// suppresses reports whether an event that occurred at ms is at or before
// the subject's newest tombstone.
func (s subject) suppresses(ms int64) bool {
	at, ok := s.forgottenAt()
	return ok && ms <= at
}

// needsKey reports whether an event that occurred at ms needs a key that
// this subject does not have yet (store.NeedsKey, in milliseconds: events
// have millisecond precision, and ms > floor(tombstone) iff ms > tombstone).
func (s subject) needsKey(ms int64) bool {
	if s.key() != nil {
		return false
	}
	at, ok := s.forgottenAt()
	return !ok || ms > at
}

// pseudonyms returns the subject's customer pseudonym in each system (16
// bytes each, in plan order), and whether they have been derived.
func (s subject) pseudonyms() ([]byte, bool) {
	slot := s.g.slot(s.i)
	p := slot[s.g.pseudoAt:s.g.digestAt:s.g.digestAt]
	return p, slot[s.g.flagsAt]&flagPseudo != 0
}

// setPseudonyms marks the pseudonyms (written into pseudonyms()) as
// derived.
func (s subject) setPseudonyms() { s.g.slot(s.i)[s.g.flagsAt] |= flagPseudo }

// pseudonym returns the subject's customer pseudonym in system sys.
func (s subject) pseudonym(sys int) *pseudonym.UUID {
	p, _ := s.pseudonyms()
	return (*pseudonym.UUID)(p[sys*16 : sys*16+16])
}

// Slot flags.
const (
	flagLive   = 1 << iota // in the generation's index
	flagKey                // has a key
	flagTomb               // has a tombstone (its time in tombs)
	flagPseudo             // customer pseudonyms derived
)

// A generation stores its entries without pointers, so that the garbage
// collector never scans them, in chunks that never move (a subject points
// into them until its batch ends):
//
//   - slots, each: the subject key (32 bytes), the customer pseudonyms (16
//     bytes per system), the ID's digest (16 bytes, see idDigest) and
//     flags;
//   - the tombstone times of the few subjects that have one, in a map;
//   - the subject hashes, 32 bytes each, apart from the slots so that a
//     forget's sweep reads only them;
//   - an open-addressing index (linear probing): per position 8 bytes, 32
//     bits of the ID's digest and the slot number plus one.
//
// Raw IDs are not kept: an entry's size does not depend on its ID's
// length (IDs may have up to MaxIDBytes), and a memory dump shows no
// customer IDs. With 3 systems this is about 150 bytes per subject (see
// BenchmarkCacheMemory).
type generation struct {
	slotLayout
	slots  [][]byte
	hashes [][]store.SubjectHash
	n      int // slots used, including removed ones
	live   int // live slots: in the index, not removed
	used   int // index positions in use (live and removed slots)
	index  []uint64
	tombs  map[int32]int64
	objs   map[int32]objectionState // the few subjects that object (objections.go)
}

// slotLayout is the byte layout of a slot for a number of systems.
type slotLayout struct {
	stride   int // bytes per slot
	pseudoAt int // offset of the pseudonyms
	digestAt int // offset of the ID's digest
	flagsAt  int // offset of the flags
}

func newSlotLayout(nsys int) slotLayout {
	pseudoAt := store.KeySize
	digestAt := pseudoAt + 16*nsys
	flagsAt := digestAt + digestSize
	return slotLayout{stride: flagsAt + 1, pseudoAt: pseudoAt, digestAt: digestAt, flagsAt: flagsAt}
}

const (
	chunkBits = 12 // slots per chunk: 4096
	chunkLen  = 1 << chunkBits
	minIndex  = 64
)

// digestSize is the size of an ID's digest in the cache.
const digestSize = 16

// idDigest is what the cache knows of a subject ID: the first 16 bytes of
// SHA-256(secret || ID), where secret is 32 random bytes drawn when the
// cache is made, and never leaves it. Two IDs share a digest only by a
// collision of SHA-256 truncated to 128 bits under a key nobody else
// knows: with a million subjects the chance is below 1e-26, and a sender
// cannot search for one offline. The index places entries by the digest's
// bits, which the sender cannot predict either.
type idDigest [digestSize]byte

// digester computes idDigests; one SHA-256 compression for IDs up to 23
// bytes. Not safe for concurrent use (the cache's owner calls it).
type digester struct {
	// buf is the secret followed by the ID being digested; it grows to at
	// most the secret plus MaxIDBytes.
	buf []byte
}

// secretSize is the size of a digester's secret.
const secretSize = 32

func newDigester() *digester {
	d := &digester{buf: make([]byte, secretSize, secretSize+64)}
	_, _ = rand.Read(d.buf) // crypto/rand.Read does not fail
	return d
}

func (d *digester) digest(id []byte) idDigest {
	d.buf = append(d.buf[:secretSize], id...)
	sum := sha256.Sum256(d.buf)
	clear(d.buf[secretSize:]) // no raw ID stays behind
	return idDigest(sum[:digestSize])
}

// indexHash is the 64 bits of a digest that place it in the index.
func (x *idDigest) indexHash() uint64 { return binary.LittleEndian.Uint64(x[:8]) }

func (g *generation) slot(i int32) []byte {
	c := g.slots[i>>chunkBits]
	o := int(i&(chunkLen-1)) * g.stride
	return c[o : o+g.stride : o+g.stride]
}

func (g *generation) hash(i int32) *store.SubjectHash {
	return &g.hashes[i>>chunkBits][i&(chunkLen-1)]
}

// digest returns the ID digest of slot i.
func (g *generation) digest(i int32) *idDigest {
	return (*idDigest)(g.slot(i)[g.digestAt : g.digestAt+digestSize])
}

// add appends a slot (not indexed) for the ID with digest x and returns
// its number.
func (g *generation) add(x *idDigest, h *store.SubjectHash) int32 {
	i := int32(g.n)
	if g.n>>chunkBits == len(g.slots) {
		g.slots = append(g.slots, make([]byte, chunkLen*g.stride))
		g.hashes = append(g.hashes, make([]store.SubjectHash, chunkLen))
	}
	g.n++
	*g.hash(i) = *h
	*g.digest(i) = *x
	return i
}

// find returns the live slot of the ID with digest x in the index, or -1.
func (g *generation) find(x *idDigest) int32 {
	if g.live == 0 {
		return -1
	}
	h := x.indexHash()
	tag := h >> 32
	for p := g.home(h); ; p = g.next(p) {
		e := g.index[p]
		if e == 0 {
			return -1
		}
		if e>>32 == tag {
			i := int32(uint32(e) - 1)
			if g.slot(i)[g.flagsAt]&flagLive != 0 && *g.digest(i) == *x {
				return i
			}
		}
	}
}

// home is h's first position in the index: the low half of h scaled to
// the index's length (which need not be a power of two).
func (g *generation) home(h uint64) int {
	return int(uint64(uint32(h)) * uint64(len(g.index)) >> 32)
}

func (g *generation) next(p int) int {
	if p++; p == len(g.index) {
		return 0
	}
	return p
}

// insert indexes slot i under its digest and marks it live. The caller
// has checked that no other live slot has the same ID. Removed slots keep
// their position in the index (they are skipped) until it grows.
func (g *generation) insert(i int32) {
	if (g.used+1)*5 > len(g.index)*4 { // load above 0.8
		g.grow(2 * (g.used + 1))
	}
	h := g.digest(i).indexHash()
	p := g.home(h)
	for g.index[p] != 0 {
		p = g.next(p)
	}
	g.index[p] = h>>32<<32 | uint64(uint32(i)+1)
	g.used++
	g.live++
	g.slot(i)[g.flagsAt] |= flagLive
}

// grow rebuilds the index for n live slots at a load of 0.8, dropping the
// removed ones.
func (g *generation) grow(n int) {
	old := g.index
	g.index = make([]uint64, max(minIndex, n*5/4+1))
	g.used = 0
	for _, e := range old {
		if e == 0 {
			continue
		}
		i := int32(uint32(e) - 1)
		if g.slot(i)[g.flagsAt]&flagLive == 0 {
			continue
		}
		p := g.home(g.digest(i).indexHash())
		for g.index[p] != 0 {
			p = g.next(p)
		}
		g.index[p] = e
		g.used++
	}
}

// remove takes slot i out of the index; its contents stay until wiped.
func (g *generation) remove(i int32) {
	slot := g.slot(i)
	if slot[g.flagsAt]&flagLive != 0 {
		slot[g.flagsAt] &^= flagLive
		g.live--
	}
}

// wipe overwrites slot i's key material and drops it from the index.
func (g *generation) wipe(i int32) {
	g.remove(i)
	slot := g.slot(i)
	clear(slot[:g.digestAt])
	slot[g.flagsAt] = 0
	delete(g.tombs, i)
	delete(g.objs, i)
}

// wipeAll overwrites the key material of every slot.
func (g *generation) wipeAll() {
	for _, c := range g.slots {
		clear(c)
	}
	clear(g.tombs)
	clear(g.objs)
	g.live = 0
}

// subjectCache is a bounded two-generation cache of subjects: lookups hit the
// hot generation, or the cold one and are promoted (copied to the hot
// one); when the hot generation is full it becomes the cold one and the
// old cold one is dropped. It bounds memory to max entries; see generation
// for their layout.
//
// Entries are invalidated by subject hash when the store reports forgets
// (see Guard in doc.go): forget queues the hash, and the next use of the
// cache (or the end of the batch) sweeps the generations' hashes once for
// all the hashes queued since, wiping what matches. Not safe for
// concurrent use; the batch loop owns it.
//
// Subjects that are evicted, replaced, dropped by clear or never cached
// (max 0) may still be used by the running batch: they are wiped by
// wipeEvicted, which the batch loop calls when the batch has ended.
type subjectCache struct {
	max       int
	layout    slotLayout
	digester  *digester
	hot, cold *generation
	scratch   *generation // subjects of the running batch that are not cached
	dropped   []*generation
	removed   []subject // promoted or replaced entries, wiped by wipeEvicted
	pending   map[store.SubjectHash]struct{}
	// systems are the systems' names in plan order, to map an objection's
	// systems to plan indices.
	systems []string
}

func newSubjectCache(max, nsys int) *subjectCache {
	// Slots are numbered with int32: far beyond any memory this bound is
	// meant for.
	max = min(max, math.MaxInt32)
	c := &subjectCache{max: max, layout: newSlotLayout(nsys), digester: newDigester(), pending: map[store.SubjectHash]struct{}{}}
	c.hot, c.cold, c.scratch = c.newGeneration(0), c.newGeneration(0), c.newGeneration(0)
	return c
}

// newGeneration returns an empty generation whose index holds n entries
// before it grows.
func (c *subjectCache) newGeneration(n int) *generation {
	g := &generation{slotLayout: c.layout, tombs: map[int32]int64{}, objs: map[int32]objectionState{}}
	g.grow(n)
	return g
}

// get returns the cached subject for a raw ID given as bytes, without
// allocating (except to grow the hot generation when promoting).
func (c *subjectCache) get(id []byte) (subject, bool) {
	c.sweep()
	x := c.digester.digest(id)
	if i := c.hot.find(&x); i >= 0 {
		return subject{c.hot, i}, true
	}
	i := c.cold.find(&x)
	if i < 0 {
		return subject{}, false
	}
	from := subject{c.cold, i}
	c.cold.remove(i)
	c.removed = append(c.removed, from)
	return c.store(&x, from.hash(), func(to subject) {
		copy(to.g.slot(to.i)[:to.g.digestAt], from.g.slot(from.i)[:from.g.digestAt])
		to.g.slot(to.i)[to.g.flagsAt] = from.g.slot(from.i)[from.g.flagsAt] &^ flagLive
		if at, ok := from.forgottenAt(); ok {
			to.g.tombs[to.i] = at
		}
		if o, ok := from.g.objs[from.i]; ok {
			to.g.objs[to.i] = o
		}
	}), true
}

// put caches what the store returned for a subject, replacing any entry
// of the same ID, and returns it.
func (c *subjectCache) put(id []byte, e *store.Entry) subject {
	c.sweep()
	fill := func(s subject) {
		slot := s.g.slot(s.i)
		if e.Key != nil {
			copy(slot[:store.KeySize], e.Key)
			slot[s.g.flagsAt] |= flagKey
		}
		if !e.ForgottenAt.IsZero() {
			s.g.tombs[s.i] = e.ForgottenAt.UnixMilli()
			slot[s.g.flagsAt] |= flagTomb
		}
		if e.Objection.Active() {
			s.g.objs[s.i] = newObjectionState(e.Objection, c.systems)
			slot[s.g.flagsAt] |= flagObjection
		}
	}
	x := c.digester.digest(id)
	if c.max <= 0 {
		s := subject{c.scratch, c.scratch.add(&x, &e.Hash)}
		fill(s)
		return s
	}
	for _, g := range []*generation{c.hot, c.cold} {
		if i := g.find(&x); i >= 0 {
			g.remove(i)
			c.removed = append(c.removed, subject{g, i})
		}
	}
	return c.store(&x, &e.Hash, fill)
}

// store adds an entry to the hot generation, first turning the
// generations over if it is full, and fills it.
func (c *subjectCache) store(x *idDigest, hash *store.SubjectHash, fill func(subject)) subject {
	// The hot generation holds up to half of max slots, and never more
	// than the cold one leaves: the two never hold more than max entries
	// together.
	half := (c.max + 1) / 2
	if c.hot.n >= half || c.hot.n+c.cold.live >= c.max {
		c.dropped = append(c.dropped, c.cold)
		c.cold = c.hot
		if c.cold.live >= c.max {
			c.dropped = append(c.dropped, c.cold)
			c.cold = c.newGeneration(0) // max 1: only the newest entry fits
		}
		c.hot = c.newGeneration(min(half, c.max-c.cold.live))
	}
	s := subject{c.hot, c.hot.add(x, hash)}
	fill(s)
	c.hot.insert(s.i)
	return s
}

// forget drops the subject with hash h: it is swept from the cache, and
// its key material wiped, before the cache is used again or the batch
// ends.
func (c *subjectCache) forget(h store.SubjectHash) {
	c.pending[h] = struct{}{}
}

// sweep wipes the cached subjects whose hashes forget queued: one pass
// over the generations' hashes, whatever their number.
func (c *subjectCache) sweep() {
	if len(c.pending) == 0 {
		return
	}
	// A filter on the first 16 bits spares most map lookups.
	var first [1 << 16 / 64]uint64
	for h := range c.pending {
		v := uint16(h[0])<<8 | uint16(h[1])
		first[v/64] |= 1 << (v % 64)
	}
	for _, g := range []*generation{c.hot, c.cold} {
		if g.live == 0 {
			continue
		}
		for ci, hs := range g.hashes {
			for j := range hs {
				i := int32(ci<<chunkBits + j)
				if int(i) >= g.n {
					break
				}
				if v := uint16(hs[j][0])<<8 | uint16(hs[j][1]); first[v/64]&(1<<(v%64)) == 0 {
					continue
				}
				if _, ok := c.pending[hs[j]]; ok && g.slot(i)[g.flagsAt]&flagLive != 0 {
					g.wipe(i)
				}
			}
		}
	}
	clear(c.pending)
}

// clear drops every entry.
func (c *subjectCache) clear() {
	clear(c.pending)
	c.dropped = append(c.dropped, c.hot, c.cold)
	c.hot, c.cold = c.newGeneration(0), c.newGeneration(0)
}

// wipeEvicted wipes the key material of the subjects evicted, replaced,
// dropped or not cached since the last call, and sweeps forgotten ones.
// The caller must no longer use them: the batch loop calls it when a
// batch has ended and its records are done.
func (c *subjectCache) wipeEvicted() {
	c.sweep()
	for i, g := range c.dropped {
		g.wipeAll()
		c.dropped[i] = nil
	}
	c.dropped = c.dropped[:0]
	for _, s := range c.removed {
		if s.g.slot(s.i)[s.g.flagsAt]&flagLive == 0 {
			s.g.wipe(s.i)
		}
	}
	clear(c.removed)
	c.removed = c.removed[:0]
	if c.scratch.n > 0 {
		c.scratch.wipeAll()
		c.scratch = c.newGeneration(0)
	}
}

// len returns the number of cached subjects.
func (c *subjectCache) len() int {
	c.sweep()
	return c.hot.live + c.cold.live
}

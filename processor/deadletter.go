package processor

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// deadLetterMinLimit is the size a dead letter is cut to after its topic
// refused one that fitted every limit the processor knew of.
const deadLetterMinLimit = 8 << 10

// deadLetter queues the original record on topic with the reason headers.
// A dead letter that would not fit in one record batch of its topic (the
// producer's batch cap, or the topic's max.message.bytes) is cut to fit:
// header error.truncated holds the original value's size, and
// error.truncated_key the original key's if the key was cut too (it keeps
// at most half the room). So a dead letter can always be produced, and
// its partition never stalls on it.
func (p *Processor) deadLetter(b *batch, topic string, r *kgo.Record, class, msg string) {
	hdrs := []kgo.RecordHeader{
		{Key: "error.class", Value: []byte(class)},
		{Key: "error.message", Value: []byte(redact(msg))},
		{Key: "source.topic", Value: []byte(r.Topic)},
		{Key: "source.partition", Value: strconv.AppendInt(nil, int64(r.Partition), 10)},
		{Key: "source.offset", Value: strconv.AppendInt(nil, r.Offset, 10)},
	}
	key, value := r.Key, r.Value
	limit, _ := p.limitOf(topic)
	if p.takeCutDeadLetter(r) {
		limit = min(limit, deadLetterMinLimit)
	}
	truncated := recordSize(key, value, hdrs) > limit
	if truncated {
		cut := []kgo.RecordHeader{
			{Key: "error.truncated", Value: strconv.AppendInt(nil, int64(len(value)), 10)},
			{Key: "error.truncated_key", Value: strconv.AppendInt(nil, int64(len(key)), 10)},
		}
		room := max(limit-recordSize(nil, nil, append(hdrs, cut...)), 0)
		if len(key) > room/2 {
			key = key[:room/2]
			hdrs = append(hdrs, cut...)
		} else {
			hdrs = append(hdrs, cut[0])
		}
		value = value[:min(len(value), room-len(key))]
	}
	b.origin[len(b.recs)] = r
	b.add(kgo.Record{Topic: topic, Key: key, Value: value, Headers: hdrs})
	b.stats.DeadLetters++
	b.dlq = append(b.dlq, deadLettered{topic: r.Topic, class: class})
	p.log.Warn("dead-lettered a record", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "class", class,
		"reason", redact(msg), "truncated", truncated)
}

// inputRef names one consumed record.
type inputRef struct {
	topic     string
	partition int32
	offset    int64
}

// recordOverhead bounds what a record batch adds to one record's key,
// value and headers (batch header 61 bytes, record framing), and
// headerOverhead what each header adds (its two length varints).
const (
	recordOverhead = 128
	headerOverhead = 8
)

// recordSize bounds the size of a record batch that holds only r.
func recordSize(key, value []byte, hdrs []kgo.RecordHeader) int {
	size := len(key) + len(value) + recordOverhead
	for _, h := range hdrs {
		size += len(h.Key) + len(h.Value) + headerOverhead
	}
	return size
}

// limitOf returns the largest record batch that topic accepts as far as
// the processor knows: the producer's batch cap, or the topic's
// max.message.bytes if that is known and lower. known reports whether the
// topic's own limit is known.
func (p *Processor) limitOf(topic string) (limit int, known bool) {
	p.tooLargeMu.Lock()
	tl, known := p.topicLimits[topic]
	p.tooLargeMu.Unlock()
	limit = p.batchMax
	if known && tl < limit {
		limit = tl
	}
	return limit, known
}

// blameTooLarge decides which refused records are too large by themselves.
// The broker refuses whole record batches, so records that merely shared a
// batch with an oversized one are refused too: a record is blamed only when
// it cannot fit its topic's max.message.bytes on its own. When the limit is
// unknown, the largest refused record is blamed (one per attempt). When no
// record is too large by itself, the producer's batches are larger than the
// topic accepts: an operator must lower kafka.producer_batch_max_bytes or
// raise the topic's limit, and the batch is retried meanwhile.
func (p *Processor) blameTooLarge(b *batch, refused []*kgo.Record) {
	if len(refused) == 0 {
		return
	}
	var largest *kgo.Record
	blamed := 0
	for _, r := range refused {
		// The client refuses by itself any record larger than its batch
		// cap, whatever the topic accepts.
		limit, known := p.limitOf(r.Topic)
		switch {
		case recordSize(r.Key, r.Value, r.Headers) > limit:
			p.markTooLarge(b, r)
			blamed++
		case !known && (largest == nil || len(r.Value) > len(largest.Value)):
			largest = r
		}
	}
	switch {
	case blamed > 0:
	case largest != nil:
		p.markTooLarge(b, largest)
	default:
		limit, _ := p.limitOf(refused[0].Topic)
		p.log.Error("the broker refused a record batch as too large although each record fits: "+
			"lower kafka.producer_batch_max_bytes to the topic's max.message.bytes, or raise that limit",
			"topic", refused[0].Topic, "max_message_bytes", limit)
	}
}

// markTooLarge records the input of an output record that the broker (or
// the client's batch limit) refused as too large, so that the redone batch
// dead-letters it instead of retrying it for ever.
func (p *Processor) markTooLarge(b *batch, r *kgo.Record) {
	i := -1
	for j := range b.recs {
		if &b.recs[j] == r {
			i = j
			break
		}
	}
	nsys := len(p.systems)
	for k := range b.orders {
		o := &b.orders[k]
		if o.slot >= 0 && i >= o.slot && i < o.slot+nsys {
			p.tooLargeMu.Lock()
			if p.tooLarge == nil {
				p.tooLarge = map[inputRef]struct{}{}
			}
			p.tooLarge[inputRef{o.rec.Topic, o.rec.Partition, o.rec.Offset}] = struct{}{}
			p.tooLargeMu.Unlock()
			return
		}
	}
	// A dead letter or a confirmation. A dead letter is cut to fit the
	// limits the processor knows (see deadLetter), so the topic accepts
	// less than it said: the redone batch cuts it to deadLetterMinLimit.
	// A confirmation's request is dead-lettered by the redone batch.
	in, ok := b.origin[i]
	if !ok {
		p.log.Error("a record the batch did not queue was refused as too large", "topic", r.Topic)
		return
	}
	ref := inputRef{in.Topic, in.Partition, in.Offset}
	p.tooLargeMu.Lock()
	if r.Topic == p.cfg.Topics.Forgotten {
		if p.tooLarge == nil {
			p.tooLarge = map[inputRef]struct{}{}
		}
		p.tooLarge[ref] = struct{}{}
	} else {
		if p.cutDeadLetters == nil {
			p.cutDeadLetters = map[inputRef]struct{}{}
		}
		p.cutDeadLetters[ref] = struct{}{}
	}
	p.tooLargeMu.Unlock()
	p.log.Error("a dead letter or confirmation is too large for its topic; raise the topic's max.message.bytes", "topic", r.Topic)
}

// takeCutDeadLetter reports whether r's dead letter was refused as too
// large although it fitted the known limits.
func (p *Processor) takeCutDeadLetter(r *kgo.Record) bool {
	p.tooLargeMu.Lock()
	defer p.tooLargeMu.Unlock()
	_, ok := p.cutDeadLetters[inputRef{r.Topic, r.Partition, r.Offset}]
	return ok
}

// takeTooLarge reports whether r's output was refused as too large. Marks
// stay until a batch commits, so that two oversized events in one batch
// cannot take turns being retried.
func (p *Processor) takeTooLarge(r *kgo.Record) bool {
	p.tooLargeMu.Lock()
	defer p.tooLargeMu.Unlock()
	_, ok := p.tooLarge[inputRef{r.Topic, r.Partition, r.Offset}]
	return ok
}

// clearTooLarge drops the marks of inputs of topic once a batch of that
// lane committed: its marked inputs are dead-lettered and committed, and
// inputs of partitions this instance lost are marked again by whichever
// batch meets them. The other lane's marks stay for its redone batch.
func (p *Processor) clearTooLarge(topic string) {
	p.tooLargeMu.Lock()
	for ref := range p.tooLarge {
		if ref.topic == topic {
			delete(p.tooLarge, ref)
		}
	}
	for ref := range p.cutDeadLetters {
		if ref.topic == topic {
			delete(p.cutDeadLetters, ref)
		}
	}
	p.tooLargeMu.Unlock()
}

// loadTopicLimits learns the max.message.bytes of the topics the processor
// writes, to tell a record that is too large by itself from one that was
// refused with the rest of its batch. Unknown topics keep no limit.
// It asks through the session's own client (adm), so that no second client
// is opened per session.
func (p *Processor) loadTopicLimits(ctx context.Context, adm *kadm.Client) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	topics := append([]string{p.cfg.Topics.Forgotten, p.cfg.Topics.OrdersDeadLetter, p.cfg.Topics.ForgetDeadLetter}, p.topics...)
	configs, err := adm.DescribeTopicConfigs(dctx, topics...)
	if err != nil {
		p.log.Debug("cannot describe the output topics' configs", "err", err)
		return
	}
	limits := map[string]int{}
	for _, rc := range configs {
		if rc.Err != nil {
			continue
		}
		for _, c := range rc.Configs {
			if c.Key != "max.message.bytes" || c.Value == nil {
				continue
			}
			if v, err := strconv.Atoi(*c.Value); err == nil && v > 0 {
				limits[rc.Name] = v
			}
		}
	}
	p.tooLargeMu.Lock()
	p.topicLimits = limits
	p.tooLargeMu.Unlock()
	for _, t := range []string{p.cfg.Topics.OrdersDeadLetter, p.cfg.Topics.ForgetDeadLetter} {
		if l, ok := limits[t]; ok && l < p.cfg.MaxRecordBytes+DeadLetterHeadroom {
			p.log.Warn("a dead-letter topic accepts less than processing.max_record_bytes plus headers: larger dead letters are truncated (header error.truncated)",
				"topic", t, "max_message_bytes", l, "max_record_bytes", p.cfg.MaxRecordBytes)
		}
	}
}

// redact keeps error text free of anything but its own words: store and
// Kafka errors never carry identifiers, but input-derived text is not
// trusted in logs.
func redact(s string) string {
	if len(s) > 200 {
		s = s[:200]
	}
	return strings.ToValidUTF8(s, "?")
}

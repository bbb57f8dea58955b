"""Decodes what Kafka's console consumer printed with fastavro.

Usage: decode_avro.py SCHEMA.json CONSOLE_OUTPUT KEY_SEPARATOR LINE_SEPARATOR

CONSOLE_OUTPUT holds records as the DefaultMessageFormatter prints them with
print.key=true: key, KEY_SEPARATOR, the raw value bytes, LINE_SEPARATOR. The
separators are random strings chosen by the test, so they cannot be taken
for Avro bytes. Prints one JSON object per record: {"key": ..., "value": ...}
with timestamps as {"$ms": milliseconds since the epoch}. Exits non-zero on
a value that does not decode or has bytes left over.
"""

import datetime
import io
import json
import sys

import fastavro

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def encode(o):
    if isinstance(o, datetime.datetime):
        return {"$ms": (o - EPOCH) // datetime.timedelta(milliseconds=1)}
    if isinstance(o, bytes):
        return o.hex()
    raise TypeError(f"cannot encode {type(o).__name__}")


def main():
    schema_path, data_path, key_sep, line_sep = sys.argv[1:5]
    with open(schema_path) as f:
        schema = fastavro.parse_schema(json.load(f))
    with open(data_path, "rb") as f:
        data = f.read()
    records = data.split(line_sep.encode())
    if records[-1] != b"":
        sys.exit("console output does not end with the line separator")
    for i, rec in enumerate(records[:-1]):
        key, sep, value = rec.partition(key_sep.encode())
        if not sep:
            sys.exit(f"record {i}: no key separator")
        buf = io.BytesIO(value)
        decoded = fastavro.schemaless_reader(buf, schema)
        if buf.tell() != len(value):
            sys.exit(f"record {i}: {len(value) - buf.tell()} bytes after the value")
        print(json.dumps({"key": key.decode(), "value": decoded}, default=encode, sort_keys=True))


if __name__ == "__main__":
    main()

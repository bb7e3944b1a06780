#!/usr/bin/env python3
"""Usage: cargo build ... --message-format=json | scripts/cargo-executable.py TARGET

Prints the path of the executable cargo built for the target named TARGET (a test binary, an
example or a binary), read from cargo's JSON messages on standard input; exits 1 if there is none."""
import json
import sys

if len(sys.argv) != 2:
    sys.exit(__doc__.splitlines()[0])
found = False
for line in sys.stdin:
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        continue
    if message.get("reason") == "compiler-artifact" and message.get("executable") and message["target"]["name"] == sys.argv[1]:
        print(message["executable"])
        found = True
if not found:
    sys.exit(f"cargo-executable: cargo built no executable named {sys.argv[1]} (did the build fail?)")

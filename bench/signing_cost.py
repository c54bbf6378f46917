"""The signing path alone, for instruction counts (A/B decisions on a machine others load):

    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out /tmp/k.pem
    for n in 0 60; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.signing_cost /tmp/k.pem $n 2>&1 | grep Collected; done

(difference / 60 = instructions per message signed).  ``N COPIES``: each of N messages signed
COPIES times, the campaign case (the first signs, the others come from the cache).  The messages
are smtp-source's kind: 2000 bytes, each with its own Message-Id, signed from a keys file for
``example.com`` as delivery does (``signing_requests`` then ``Signer.sign``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from mqtwisted.signing import Signer, load_keys_file, signing_requests


def message(i: int) -> bytes:
    head = (f"From: <a@example.com>\r\nTo: <b@example.net>\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\n"
            f"Message-Id: <{i}.bench@example.com>\r\nSubject: test {i}\r\n\r\n").encode()
    return head + (b"La de da de da 1.\r\n" * 110)[:2000]


def main(key: str, count: int, copies: int = 1) -> None:
    with tempfile.TemporaryDirectory() as directory:
        keys_path = Path(directory) / "keys.toml"
        keys_path.write_text(f'[[key]]\ndomain = "example.com"\nselector = "bench"\nfile = "{Path(key).resolve()}"\n')
        keys = load_keys_file(str(keys_path))
    signer = Signer("mx.example.com")
    messages = [message(i) for i in range(count)]
    for _ in range(copies):
        for m in messages:
            signer.sign(m, signing_requests(None, m, keys))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)

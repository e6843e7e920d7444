"""Run by the peers' Python (``.peers/tlog/bin/python``): tlog-scales' own reading of our log.

Not a test module and not imported by one: it uses tlog-scales as a library, because its CLI
(``tlog-tiles``) never checks a signature. Arguments: the mirrored log folder, the log's
vkey, a witness vkey, an old tree size and its root (base64). It prints one JSON object
with what tlog-scales computed; the test compares it with ours (test_tlog_peers.py).
"""

import base64
import json
import sys

from tlog_scales import backend
from tlog_scales.reader import TilesReader
from tlog_scales.signing import Vkey, VkeySet


def main(folder: str, log_vkey: str, witness_vkey: str, old_size: str, old_root: str) -> None:
    reader = TilesReader(backend.make_backend(folder))
    checkpoint = reader.get_checkpoint()
    checkpoint.verify(Vkey.from_string(log_vkey))  # raises unless the log signed it
    cosigned = VkeySet(Vkey.from_string(witness_vkey)).verify(checkpoint.signatures, checkpoint)
    consistency = reader.get_consistency_proof(int(old_size), checkpoint.size)
    consistency.check(base64.b64decode(old_root), checkpoint.root_hash)
    print(
        json.dumps(
            {
                "origin": checkpoint.origin,
                "size": checkpoint.size,
                "root": base64.b64encode(checkpoint.root_hash).decode(),
                "root_from_tiles": base64.b64encode(reader.calculate_root_hash()).decode(),
                "cosignatures": len(cosigned),
                "consistency": [base64.b64encode(h).decode() for h in consistency.node_hashes],
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])

"""moto's server, with S3's conditional writes atomic as they are on AWS.

moto serves each request on a thread of its own, and its PutObject checks `If-None-Match: *` (and
`If-Match`) before it stores, with nothing in between held: two creates of one key at once can both
succeed, where S3 lets exactly one. The store's create-once contract (`put_if_absent`: job claims,
idempotency records, the scaler lease) is tested with concurrent writers, so here every PutObject
checks and stores under one lock. Usage: the arguments of `python -m moto.server`.
"""

import sys
import threading

from moto import server
from moto.s3.responses import S3Response

_puts = threading.Lock()
_put_object = S3Response.put_object


def _atomic_put_object(self, *args, **kwargs):
    with _puts:
        return _put_object(self, *args, **kwargs)


S3Response.put_object = _atomic_put_object

if __name__ == "__main__":
    server.main(sys.argv[1:])

"""Opening a bucket while another coordinator creates it: a stream JetStream
does not show yet is waited for, not a crash (seen in the lab: two coordinators
starting at once on a new cluster, one died on `stream not found`)."""

from types import SimpleNamespace

import nats.js.errors

from ferry.coordinator.kv import open_bucket


class RacingJetStream:
    """key_value finds the bucket; stream_info does not see its stream the first `misses` times."""

    def __init__(self, misses: int) -> None:
        self.misses = misses
        self.updated = []

    async def key_value(self, bucket):
        return SimpleNamespace(_name=bucket)

    async def stream_info(self, name):
        if self.misses:
            self.misses -= 1
            raise nats.js.errors.NotFoundError(code=404, err_code=10059, description="stream not found")
        return SimpleNamespace(config=SimpleNamespace(num_replicas=3))

    async def update_stream(self, config):
        self.updated.append(config)


async def test_a_stream_not_shown_yet_is_waited_for():
    js = RacingJetStream(misses=2)
    bucket = await open_bucket(js, "ferry_vm_claims", "test", replicas=3)
    assert js.misses == 0 and js.updated == [] and bucket is not None

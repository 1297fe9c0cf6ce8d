"""Every Redis key the cluster uses, in one place. All keys start with the configured prefix, so
side-by-side clusters and tests never collide."""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str = "va:"):
        self.prefix = prefix
        # ZSET worker id -> last heartbeat (Redis server time, ms); older than stale_after_ms = dead.
        self.workers = f"{prefix}workers"
        # ZSET controller id -> last heartbeat (ms).
        self.controllers = f"{prefix}controllers"
        # STREAM + group: worker -> controller call-control requests.
        self.controller_inbox = f"{prefix}controller:inbox"
        # SET of live call ids.
        self.calls_active = f"{prefix}calls:active"
        # ZSET call id -> arrival time (ms): calls waiting for a free slot, first come first served.
        self.admission_queue = f"{prefix}admission:queue"
        # STRING `{token}:{controller id}` with a TTL: the leading controller's lease (controller/leadership.py).
        self.leader = f"{prefix}leader"
        # STRING counter: INCR'd on every acquisition of the lease; its value is the fencing token.
        self.leader_token = f"{prefix}leader:token"
        # SET of ended call ids whose end-of-call emails are still to be enqueued (added by the release that ended
        # the call, removed once enqueued): a controller that dies in between leaves them to the next reconcile.
        self.mail_pending = f"{prefix}calls:mail_pending"
        # STREAM: inbox entries no reader could use (shared/dead_letters.py), MAXLEN ~10 000.
        self.dead_letters = f"{prefix}dead-letters"

    def worker(self, wid: str) -> str:
        """HASH: media address, capacity, active, draining, version, health URL."""
        return f"{self.prefix}worker:{wid}"

    def worker_inbox(self, wid: str) -> str:
        """STREAM: assignments and controller -> worker commands."""
        return f"{self.prefix}worker:{wid}:inbox"

    def controller(self, cid: str) -> str:
        """HASH: host, pid, health URL, version of one controller process."""
        return f"{self.prefix}controller:{cid}"

    def call(self, call_id: str) -> str:
        return f"{self.prefix}call:{call_id}"

    def call_lease(self, call_id: str) -> str:
        return f"{self.prefix}call:{call_id}:lease"

    def worker_rtp_ports(self, wid: str) -> str:
        """SET: RTP ports of this worker reserved by live calls."""
        return f"{self.prefix}worker:{wid}:rtp_ports"

    def worker_rtp_blocked(self, wid: str) -> str:
        """ZSET: RTP ports of this worker that another process held (port -> until, ms by Redis's clock):
        admission skips them until then (shared/rtp_ports.py)."""
        return f"{self.prefix}worker:{wid}:rtp_blocked"

    def provider_sessions(self, provider: str) -> str:
        """STRING counter: live sessions of a provider, against its max_concurrent_sessions."""
        return f"{self.prefix}provider:{provider}:sessions"

    def call_log(self, call_id: str) -> str:
        return f"{self.prefix}call:{call_id}:log"

    def usage_day(self, day: str) -> str:
        """HASH: the cluster's usage on `day` (YYYY-MM-DD, limits.timezone), shared/usage_limits.py."""
        return f"{self.prefix}usage:day:{day}"

    def usage_month(self, month: str) -> str:
        """HASH: the cluster's usage in `month` (YYYY-MM), shared/usage_limits.py."""
        return f"{self.prefix}usage:month:{month}"

    def queue(self, name: str) -> str:
        """RQ queue name: the prefix keeps clusters that share a Redis apart."""
        return f"{self.prefix}{name}"

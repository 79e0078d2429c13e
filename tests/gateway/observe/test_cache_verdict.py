"""The verdict and the page cache: ``php-uncached`` for a saturated pool whose
site has a cache that lets cacheable GETs through, the hint for a pool
without a cache, and nothing for a load no cache could take."""

from __future__ import annotations

from gateway.observe.aggregate import merge_status
from gateway.observe.diagnosis import classify

from .test_diagnosis import obs, pool

SATURATED = dict(busy=4, waiting=20, queue_wait_p50=0.5, responses=100, worker_cpu=0.9)


def test_a_cache_that_lets_cacheable_gets_bypass_is_php_uncached():
    v = classify(obs(pool(**SATURATED, cacheable=78, cache_bypassed=70, cache_on=True)))
    assert v.bottleneck == "php-uncached"
    assert "78% of its PHP responses are GETs the page cache could keep" in v.reason
    assert "90% of them bypassed it" in v.reason and "bypass_cookies" in v.reason


def test_a_cache_that_misses_points_at_the_ttl():
    v = classify(obs(pool(**SATURATED, cacheable=60, cache_bypassed=5, cache_on=True)))
    assert v.bottleneck == "php-uncached" and "ttl" in v.reason


def test_without_a_cache_the_php_verdict_gets_the_hint():
    v = classify(obs(pool(**SATURATED, cacheable=80)))
    assert v.bottleneck == "php-cpu"
    assert v.reason.endswith("A page cache would take 80% of this load off PHP ([sites.X.cache] enabled = true).")


def test_an_uncacheable_load_stays_php_waiting_without_a_hint():
    for cache_on in (True, False):
        v = classify(obs(pool(**{**SATURATED, "worker_cpu": 0.02}, cacheable=10, cache_on=cache_on)))
        assert v.bottleneck == "php-waiting" and "page cache" not in v.reason


def test_a_pool_with_free_slots_is_not_php_uncached():
    v = classify(obs(pool(busy=2, responses=100, cacheable=90, cache_on=True)))
    assert v.bottleneck == "healthy"


def test_the_master_words_it_in_the_merged_numbers():
    def worker(share: float) -> dict:
        return {"pid": 7, "verdict": {"bottleneck": "php-uncached", "reason": "x", "for_seconds": 5.0},
                "listener": {"process_cpu": 0.3, "connections": {"open": 1}, "requests_total": 1}, "pools": {"php": {
                    "size": 2, "busy": 2, "queue_depth": 5, "responses_10s": 50, "cacheable_share": share,
                    "cache_bypassed_share": 1.0, "cache_on": True, "worker_cpu": 0.9}}}

    merged = merge_status([worker(0.8), worker(0.6)], pid=1, uptime=1.0)
    assert merged["pools"]["php"]["cacheable_share"] == 0.7
    reason = merged["verdict"]["reason"]
    assert merged["verdict"]["bottleneck"] == "php-uncached"
    assert "70% of its PHP responses are GETs the page cache could keep" in reason and "bypass_cookies" in reason
    assert reason.endswith("(2 of 2 worker processes)")

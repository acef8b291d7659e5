"""CRMBRIDGE_INTAKE_WAIT_REPLICAS: a webhook is answered 200 only once a replica has it (Redis's WAIT on
the connection that wrote). Without a replica in time the answer is 503, the event stays queued and
marked seen, and the vendor's retry is a duplicate, answered 200 once a replica has the mark: nothing
is done twice, and nothing acknowledged rests on the primary alone. Also the settings' parsing."""
from __future__ import annotations

import dataclasses

import pytest
from redis import Redis

import queueing
from config.loader import ConfigErrors
from config.settings import Settings
from redisconn import NotReplicated, connect, parse_sentinels
from tests.reliability.harness import AMO_SECRET, FORM, RedisServer, amo_status_form, quickstart_config, vendor_env, wait_until

URL = f"/hooks/quickstart-amo?token={AMO_SECRET}"


def post(client, lead: int):
    return client.post(URL, data=amo_status_form(lead), headers={"Content-Type": FORM})


@pytest.mark.timeout(60)
def test_intake_answers_503_until_a_replica_has_the_webhook_and_the_retry_is_a_duplicate(tmp_path):
    from webhooks import create_app
    with RedisServer(tmp_path / "primary") as primary:
        config = quickstart_config(tmp_path / "config")
        settings = Settings(config_dir=config, redis_url=primary.url(0), redis_prefix="crmwait:", queue_name="crmwait",
                            environ=vendor_env("http://127.0.0.1:9", "http://127.0.0.1:9"), testing=True,
                            intake_wait_replicas=1, intake_wait_ms=500, history_path=tmp_path / "h.sqlite3")
        app = create_app(settings=settings)
        store = Redis(port=primary.port)
        try:
            client = app.test_client()
            first = post(client, 901)
            assert first.status_code == 503 and first.get_json()["error"] == "not yet replicated; retry later"
            assert store.llen("rq:queue:crmwait") == 1 and store.exists("crmwait:seen:" + _event_id(store))
            again = post(client, 901)   # the vendor's retry: still no replica
            assert again.status_code == 503 and store.llen("rq:queue:crmwait") == 1
            with RedisServer(tmp_path / "replica", extra_args=("--replicaof", "127.0.0.1", str(primary.port))):
                assert wait_until(lambda: store.info("replication").get("slave0", {}).get("state") == "online", 20)
                retried = post(client, 901)
                assert retried.status_code == 200 and retried.get_json() == {"accepted": 0, "duplicates": 1}
                fresh = post(client, 902)
                assert fresh.status_code == 200 and fresh.get_json() == {"accepted": 1, "duplicates": 0}
            assert store.llen("rq:queue:crmwait") == 2   # each event queued once
            assert store.info("commandstats")["cmdstat_wait"]["calls"] >= 4
        finally:
            store.close()
            app.extensions["crmbridge"].backend.close()


def _event_id(store: Redis) -> str:
    keys = [k.decode() for k in store.scan_iter("crmwait:seen:*")]
    assert len(keys) == 1, keys
    return keys[0].removeprefix("crmwait:seen:")


def test_the_replica_wait_needs_the_default_intake(tmp_path, monkeypatch):
    monkeypatch.setattr(queueing, "INTAKE", "rq")
    from runtime import Runtime
    settings = Settings(config_dir=quickstart_config(tmp_path / "config"), redis_url="redis://127.0.0.1:1/0",
                        environ=vendor_env("http://127.0.0.1:9", "http://127.0.0.1:9"), intake_wait_replicas=1)
    with pytest.raises(ConfigErrors, match="CRMBRIDGE_INTAKE=rq"):
        Runtime.create(settings)


def test_settings_from_the_environment():
    env = {"REDIS_SENTINELS": "10.0.0.1:26379, sentinel-b, [::1]:26380", "REDIS_SENTINEL_SERVICE": "bridge",
           "REDIS_URL": "redis://:secret@ignored:1/3", "CRMBRIDGE_INTAKE_WAIT_REPLICAS": "1",
           "CRMBRIDGE_INTAKE_WAIT_MS": "250", "REDIS_SENTINEL_PASSWORD": "s3"}
    s = Settings.from_env(env)
    assert s.redis_sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26379), ("::1", 26380))
    assert (s.redis_sentinel_service, s.intake_wait_replicas, s.intake_wait_ms) == ("bridge", 1, 250)
    assert "s3" not in repr(s)
    # Sentinels without REDIS_URL: the primary's database 0, no password
    assert Settings.from_env({"REDIS_SENTINELS": "h:1"}).redis_url == "redis://localhost/0"
    assert Settings.from_env({}).redis_sentinels == () and Settings.from_env({}).intake_wait_replicas == 0
    for bad in ("h:port", ":26379", " , ", "h:70000"):
        with pytest.raises(ValueError, match="REDIS_SENTINELS"):
            parse_sentinels(bad)


def test_a_sentinel_client_keeps_the_urls_database_and_password(tmp_path):
    """The client redisconn makes from the Sentinels: the URL's database and password reach the primary;
    rqworker's own pool (redisconn.fresh) is a Sentinel pool too."""
    from redis.sentinel import SentinelConnectionPool
    from redisconn import fresh
    settings = Settings(redis_url="redis://:pw@unused:1/4", redis_sentinels=(("127.0.0.1", 1),),
                        redis_sentinel_service="svc")
    client = connect(settings)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "svc"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (4, "pw")
    other = fresh(client)
    assert isinstance(other.connection_pool, SentinelConnectionPool) and other.connection_pool is not pool
    assert other.connection_pool.connection_kwargs["db"] == 4
    assert dataclasses.replace(settings, redis_sentinels=()).redis_url.endswith("/4")
    assert issubclass(NotReplicated, Exception)


@pytest.mark.timeout(60)
def test_a_step_calls_the_vendor_only_once_a_replica_has_its_marks(tmp_path, monkeypatch, fake_amo):
    """The worker's side of the replica wait (pipeline/execute.py): on a primary that no replica
    follows (a second promotion under load left one such, written to and then wiped; or an old primary
    back at its address before the Sentinels make it a replica) a step calls no vendor and leaves no
    mark; once a replica has the step's "sent" mark, the task is made once."""
    from connectors.base import Entity, Event
    from pipeline import execute
    from rules.engine import PlannedAction
    from runtime import Runtime
    monkeypatch.setattr(execute, "REPLICA_PATIENCE", 0.3)
    monkeypatch.setattr(execute, "SEND_PATIENCE", 0.3)
    fake_amo.add_lead({"id": 31926520, "name": "Brief", "status_id": 10216995, "pipeline_id": 2116})
    event = Event(id="quickstart-amo:replica-wait", connection="quickstart-amo", source="amocrm", kind="stage.changed",
                  entity=Entity("lead", "31926520"), data={}, raw={}, occurred_at="2026-11-24T10:00:00+00:00")
    action = PlannedAction(rule="Test rule", rule_id="test", step=0, connection="quickstart-amo", method="create_task",
                           args={"entity": {"type": "lead", "id": "31926520"}, "text": "Передзвонити клієнту",
                                 "due": "2026-11-25T10:00:00+00:00"}, key=f"{event.id}|test|create_task")
    with RedisServer(tmp_path / "primary") as primary:
        settings = Settings(config_dir=quickstart_config(tmp_path / "config"), redis_url=primary.url(0),
                            redis_prefix="crmwait:", queue_name="crmwait", history_path=tmp_path / "h.sqlite3",
                            environ=vendor_env(fake_amo.url, "http://127.0.0.1:9"), intake_wait_replicas=1,
                            intake_wait_ms=500, retry_budget=1)
        rt = Runtime.create(settings)
        try:
            with pytest.raises(execute.NotYetReplicated, match="0 of 1 replica"):
                execute.execute(rt, event, action)
            assert fake_amo.tasks == {}                                        # nothing was sent
            assert not rt.store.exists(rt.keys("attempted", action.key), rt.keys("done", action.key))
            with RedisServer(tmp_path / "replica", extra_args=("--replicaof", "127.0.0.1", str(primary.port))) as replica:
                store = rt.store
                assert wait_until(lambda: store.info("replication").get("slave0", {}).get("state") == "online", 20)
                assert execute.execute(rt, event, action) is True
                assert len(fake_amo.tasks) == 1
                assert execute.execute(rt, event, action) is False              # done: skipped
                copy = Redis(port=replica.port)
                assert wait_until(lambda: copy.exists(rt.keys("done", action.key)) == 1, 5)   # replicated after
                copy.close()
                # a mark that is not on the primary answering (written to one that is no longer it)
                with pytest.raises(execute.PrimaryChanged):
                    execute.replicate(rt, rt.keys("attempted", "written elsewhere"))
            assert len(fake_amo.tasks) == 1
            assert store.info("commandstats")["cmdstat_wait"]["calls"] >= 2   # the failed one, the "sent" one
        finally:
            rt.backend.close()

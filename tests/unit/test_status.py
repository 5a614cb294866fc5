import datetime

from remote_docker_operator import status as st

T0 = datetime.datetime(2026, 11, 26, 12, 0, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(seconds=75)


def cond(status: st.Status, type_: str) -> dict[str, object]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_transition_sets_phase_conditions_and_times() -> None:
    s = st.transition(
        {}, "Provisioning", "Provisioning", "creating", 1, T0, startTime=st.timestamp(T0)
    )
    assert s["phase"] == "Provisioning"
    assert s["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in s["conditions"]} == {
        "EngineReady": "False",
        "Complete": "False",
        "Failed": "False",
    }
    running = st.transition(s, "Running", "JobRunning", "go", 1, T1)
    ready = cond(running, "EngineReady")
    assert ready["status"] == "True"
    assert ready["lastTransitionTime"] == st.timestamp(T1)
    assert running["engine"]["ready"] is True
    # Unchanged conditions keep their lastTransitionTime.
    assert cond(running, "Complete")["lastTransitionTime"] == st.timestamp(T0)


def test_finishing_records_completion_and_duration() -> None:
    s = st.transition({}, "Running", "JobRunning", "", 1, T0, startTime=st.timestamp(T0))
    done = st.transition(s, "Succeeded", "Succeeded", "ok", 1, T1, exitCode=0)
    assert done["completionTime"] == st.timestamp(T1)
    assert done["duration"] == "1m15s"
    assert cond(done, "Complete")["status"] == "True"
    assert cond(done, "Failed")["status"] == "False"
    assert cond(done, "EngineReady")["status"] == "False"
    again = st.transition(done, "Succeeded", "Succeeded", "ok", 1, T1 + T1.resolution * 10**6)
    assert again["completionTime"] == done["completionTime"]


def test_failed() -> None:
    s = st.transition({}, "Failed", "DeadlineExceeded", "too slow", 2, T0)
    assert cond(s, "Failed") | {"lastTransitionTime": "x"} == {
        "type": "Failed",
        "status": "True",
        "observedGeneration": 2,
        "lastTransitionTime": "x",
        "reason": "DeadlineExceeded",
        "message": "too slow",
    }
    assert "duration" not in s  # never started


def test_merge_patch() -> None:
    old = {"phase": "Pending", "reason": "Queued", "message": "m"}
    new = {"phase": "Provisioning", "message": "m", "namespace": "bj-1"}
    assert st.merge_patch(old, new) == {
        "phase": "Provisioning",
        "namespace": "bj-1",
        "reason": None,
    }
    assert st.merge_patch(new, new) == {}


def test_durations_and_times() -> None:
    assert st.format_duration(5) == "5s"
    assert st.format_duration(3725) == "1h2m"
    assert st.format_duration(-3) == "0s"
    assert st.parse_time(st.timestamp(T0)) == T0
    assert st.parse_time(None) is None


def test_engine_endpoint_survives_transitions() -> None:
    s = st.transition(
        {},
        "Provisioning",
        "Provisioning",
        "",
        1,
        T0,
        engine={"endpoint": "tcp://e:2376", "ready": False},
    )
    assert s["engine"] == {"endpoint": "tcp://e:2376", "ready": False}
    s = st.transition(s, "Running", "JobRunning", "", 1, T1)
    assert s["engine"] == {"endpoint": "tcp://e:2376", "ready": True}

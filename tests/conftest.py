import os

import pytest

from bench.core import repro

repro.apply_environment()  # the CLI's pinned kernels, before torch or numpy is imported

from hypothesis import HealthCheck, settings  # noqa: E402

# Never wait on a model hub, and keep every cache inside the test session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# Property tests draw the same examples on every run and never time an example: a slow
# machine or a busy neighbour worker must not fail them.
settings.register_profile("bench", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("bench")

# Tests that start their own Ray cluster, or the local S3 server, share one xdist worker:
# two Ray clusters side by side would each claim both cores (and ~0.7 GB), and the S3
# module's server is then started once rather than once per worker. Everything else spreads
# over the workers (`--dist loadgroup` in pyproject.toml).
GROUPS = {"ray": "ray", "s3": "ray"}  # the S3 resume test runs Ray too


def pytest_collection_modifyitems(items):
    for item in items:
        for marker, group in GROUPS.items():
            if item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.xdist_group(group))
                break


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # tmp_path_factory gives each xdist worker a folder of its own, so workers never share a cache.
    os.environ["BENCH_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))
    # The reproducibility mode's one thread per unit of work: in-process results are then the
    # same whatever the number of workers, and two workers never fight over the cores.
    repro.configure_torch()
    import attacks  # noqa: F401  registration
    import bench.data.builtin
    import bench.models.classifiers
    import bench.models.ladder
    import bench.models.published
    import bench.models.zoo
    import bench.protocol.settings  # noqa: F401
    import defenses  # noqa: F401

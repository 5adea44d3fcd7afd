import os

import pytest
import torch

# Never wait on a model hub, and keep every cache inside the test session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["BENCH_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))
    torch.set_num_threads(2)
    import attacks  # noqa: F401  registration
    import bench.data.builtin
    import bench.models.classifiers
    import bench.models.ladder
    import bench.models.published
    import bench.models.zoo
    import bench.settings  # noqa: F401
    import defenses  # noqa: F401

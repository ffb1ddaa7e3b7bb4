"""A fused synthetic model (TorchScript, int8 rowwise tables) served by a real tritonserver through the repository
the generator writes (local flavour: python backend running torch.jit.load): the scores equal TorchScriptSession's
in-process ones, and an id beyond its table, a request that does not hold together or one that is too big gets a
4xx naming the problem while the server keeps serving."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.core.ports import free_ports
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.models.synthetic import RmcSpec, SyntheticDLRM, synthetic_inputs
from recforge.models.synthetic_fused import TorchScriptSession, fused_variant, save_torchscript

pytestmark = pytest.mark.triton
TINY = RmcSpec("tiny", num_tables=3, rows_per_table=1000, lookups_per_table=6, embedding_dim=8, dense_features=13,
               bottom_mlp=(16, 8), top_mlp=(16, 1))
MODEL = "rmc_tiny_int8"
OUTPUT = "probability__0"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, in-process session) of the int8-table variant of a tiny synthetic model."""
    folder = tmp_path_factory.mktemp("torchscript")
    path = save_torchscript(fused_variant(SyntheticDLRM(TINY, seed=0), "int8_tables"), folder / "tiny.int8.pt")
    mr.write_model_repository(folder / "repo", model_name=MODEL, model_path=path, spec=TINY,
                              serving_config=mr.ServingConfig(max_batch_size=32, threads_per_instance=1))
    http, grpc, metrics = free_ports(3)
    server = tr.TritonServer(folder / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics,
                             log_path=folder / "server.log", load_models=[MODEL])
    with server:
        yield server, TorchScriptSession(path, TINY)
    assert not server.alive()


def test_scores_equal_the_in_process_torchscript_session(served):
    server, session = served
    config = tr.model_config(server.url, MODEL)
    assert config["backend"] == "python" and [o["name"] for o in config["output"]] == [OUTPUT]
    for batch, seed in ((1, 1), (16, 2), (32, 3)):
        feed = synthetic_inputs(TINY, batch, seed=seed)
        out = tr.infer(server.url, MODEL, feed)[OUTPUT]
        assert out.shape == (batch,) and out.dtype == np.float32
        np.testing.assert_allclose(out, session.run(feed), rtol=1e-5, atol=1e-6)


def beyond_own_table(feed: dict) -> dict:
    """Item 0's first id of table 1 moved to table 1's row 1000: inside the fused table (table 2's first row), but
    beyond its own table's 1000 rows."""
    indices = feed["indices"].copy()
    first_of_table1 = int(feed["lengths"][0, 0])
    assert feed["lengths"][0, 1] > 0
    indices[first_of_table1] = 2 * TINY.rows_per_table
    return {**feed, "indices": indices}


def bad_requests(feed: dict) -> dict[str, tuple[dict, str]]:
    return {
        "id beyond its table": (beyond_own_table(feed), "embedding table 'tiny.table1' has 1000 rows"),
        "id beyond every table": ({**feed, "indices": feed["indices"] + 10 * TINY.rows_per_table},
                                  "ids must be in their table's range"),
        "negative id": ({**feed, "indices": feed["indices"] - 10 * TINY.rows_per_table}, "table"),
        "lengths do not add up": ({**feed, "indices": feed["indices"][:-1]}, "lengths add up to"),
        "items differ": ({**feed, "dense": feed["dense"][:2]}, "dense has 2 items but lengths 4"),
        "too many items": (synthetic_inputs(TINY, 33, seed=9), "at most 32"),
        "wrong dtype": ({**feed, "indices": feed["indices"].astype(np.int32)}, ""),
        "wrong rank": ({**feed, "lengths": feed["lengths"].reshape(-1)}, ""),
    }


@pytest.mark.parametrize("case", list(bad_requests(synthetic_inputs(TINY, 4, seed=4))))
def test_a_bad_request_gets_a_4xx_and_the_server_keeps_serving(served, case):
    server, session = served
    feed = synthetic_inputs(TINY, 4, seed=4)
    bad, says = bad_requests(feed)[case]
    with pytest.raises(tr.TritonError) as err:
        tr.infer(server.url, MODEL, bad)
    assert 400 <= err.value.status < 500 and says in str(err.value), str(err.value)
    assert server.alive() and server.ready()
    np.testing.assert_allclose(tr.infer(server.url, MODEL, feed)[OUTPUT], session.run(feed), rtol=1e-5, atol=1e-6)

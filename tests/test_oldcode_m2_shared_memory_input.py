"""An HTTP infer whose input a tritonclient user placed in a shared-memory region is refused as such,
as over gRPC: the gateway has no shared-memory extension, and its refusal said the input "needs 'data'
or a 'binary_data_size' parameter" (an input the client did send, in a region)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.repo_fixtures import CHANNELS, SIZE, classifier_gateway

MODEL = "lenet"
IMAGE = [1, SIZE, SIZE, CHANNELS]
REFUSAL = "input 'images': shared memory is not supported here (send the data)"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with classifier_gateway(tmp_path_factory.mktemp("shm-input")) as live:
        yield live


@pytest.mark.parametrize("client", [httpclient, grpcclient], ids=["http", "grpc"])
def test_an_input_in_shared_memory_is_refused_as_shared_memory(gateway, client) -> None:
    url = gateway.url if client is httpclient else gateway.grpc_url
    image = client.InferInput("images", IMAGE, "UINT8")
    image.set_shared_memory("region", int(np.prod(IMAGE)))
    with pytest.raises(InferenceServerException) as refused:
        client.InferenceServerClient(url).infer(MODEL, [image])
    assert refused.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    assert REFUSAL in refused.value.message()


def test_an_input_sent_in_the_request_is_still_served(gateway) -> None:
    image = httpclient.InferInput("images", IMAGE, "UINT8")
    image.set_data_from_numpy(np.zeros(IMAGE, np.uint8))
    answer = httpclient.InferenceServerClient(gateway.url).infer(MODEL, [image])
    assert answer.as_numpy("probabilities").shape == (1, 3)

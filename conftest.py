import pytest
import torch

import flowkit


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["flowkit"] = flowkit

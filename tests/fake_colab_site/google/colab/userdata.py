"""``google.colab.userdata`` as Colab's secrets panel answers it, for tests: ``get(name)`` reads the JSON file named
by ``FAKE_COLAB_SECRETS`` and raises ``SecretNotFoundError`` for a name it does not hold. Put on the path of the
runner's process only: a kernel papermill starts on Colab has no frontend to answer, and here it finds no module.
(``google/`` has no ``__init__.py``, so the real ``google.*`` namespace packages still import beside it.)"""

from __future__ import annotations

import json
import os
from pathlib import Path


class SecretNotFoundError(Exception):
    pass


def get(key: str) -> str:
    secrets = json.loads(Path(os.environ["FAKE_COLAB_SECRETS"]).read_text(encoding="utf-8"))
    if key not in secrets:
        raise SecretNotFoundError(key)
    return secrets[key]

"""``python -m utils.images download CSV CACHE_DIR``: the image downloader as a command (``utils.data.download``).

``--help`` lists the options. The library code lives in ``utils.data.images`` (names, loader) and
``utils.data.download`` (the downloader).
"""

import sys

from utils.data.download import main

if __name__ == "__main__":
    sys.exit(main())

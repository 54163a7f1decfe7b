"""``python -m crmcli``: the same as the ``crm-stream`` command."""

import sys

from crmcli import main

sys.exit(main())

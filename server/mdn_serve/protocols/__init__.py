"""Protocol adapters, one sub-package each; the app serves every adapter listed in ADAPTERS."""

from mdn_serve.protocols import mdn_v1, oip
from mdn_serve.protocols.rpc import ProtocolAdapter

ADAPTERS: tuple[ProtocolAdapter, ...] = (mdn_v1.ADAPTER, oip.ADAPTER)

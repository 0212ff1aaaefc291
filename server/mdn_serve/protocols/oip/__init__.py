"""The Open Inference Protocol (KServe v2) over gRPC, for Triton and KServe clients."""

from mdn_serve.protocols.oip.codec import SERVICES
from mdn_serve.protocols.oip.service import PROTOCOL, OipServicer
from mdn_serve.protocols.rpc import ProtocolAdapter, ServiceBinding

ADAPTER = ProtocolAdapter(label=PROTOCOL, services=(ServiceBinding(SERVICES["GRPCInferenceService"], OipServicer),))

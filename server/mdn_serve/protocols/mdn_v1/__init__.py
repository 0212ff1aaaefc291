"""The mdn.v1 protocol (proto/mdn/v1/mdn.proto): mixture parameters, samples, modes and IK over gRPC."""

from mdn_serve.protocols.mdn_v1.codec import SERVICES
from mdn_serve.protocols.mdn_v1.service import PROTOCOL, IkServicer, MdnServicer
from mdn_serve.protocols.rpc import ProtocolAdapter, ServiceBinding

ADAPTER = ProtocolAdapter(
    label=PROTOCOL,
    services=(
        ServiceBinding(SERVICES["MixtureDensityService"], MdnServicer),
        ServiceBinding(SERVICES["InverseKinematicsService"], IkServicer),
    ),
)

"""The mdn.v1 protocol (proto/mdn/v1/mdn.proto): mixture parameters, samples, modes and IK over gRPC."""

from mdn_serve._proto.mdn.v1 import mdn_pb2
from mdn_serve.protocols.mdn_v1.service import PROTOCOL, IkServicer, MdnServicer
from mdn_serve.protocols.rpc import ProtocolAdapter, ServiceBinding

_SERVICES = mdn_pb2.DESCRIPTOR.services_by_name

ADAPTER = ProtocolAdapter(
    label=PROTOCOL,
    services=(
        ServiceBinding(_SERVICES["MixtureDensityService"], MdnServicer),
        ServiceBinding(_SERVICES["InverseKinematicsService"], IkServicer),
    ),
)

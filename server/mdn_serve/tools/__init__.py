"""Tools that talk to a server over gRPC: the client (`mdn-client`), the load generator
(`mdn-loadtest`) and the benchmark (`mdn-bench`). Nothing in the server imports them."""

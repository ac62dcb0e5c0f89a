"""Wire formats: REST and KServe v2 HTTP routers, the gRPC servicer, tensor codecs, body limits, images."""

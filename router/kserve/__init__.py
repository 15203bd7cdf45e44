"""The router's side of KServe resources: apply / get / delete over MeshAdmin (mesh/kserve/)."""

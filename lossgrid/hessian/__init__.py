"""`lossgrid hessian`: the loss Hessian as an operator, its extreme eigenpairs, trace and spectral density, the
curvature of surface points and Hessian eigenvectors as plotting directions."""

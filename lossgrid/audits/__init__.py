"""`lossgrid audit`: a model's flatness report (sharpness, random-direction increase, Hessian, barrier) and its
pass/fail gate. Named `audits` because :func:`lossgrid.audit` is a function."""

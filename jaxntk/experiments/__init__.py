"""The paper's experiments, one module each, with a `cpu` preset (minutes on 2 cores) and a `paper`
preset (the authors' size, for a GPU). Each writes plain JSON (and NPZ arrays) that `jaxntk.plots`
draws from."""

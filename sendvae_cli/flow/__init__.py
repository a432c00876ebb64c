"""Flow matching: the linear interpolant and time sampling, the training loss, and (samplers.py) the
ODE/SDE samplers. Convention: t = 0 is data, t = 1 is noise, x_t = (1 - t) x + t eps, and the model
predicts the velocity v = eps - x.
"""

"""RetailSim: a world model of grocery shoppers.

``retailsim.ops`` holds the kernels (selective scan, focal loss, contrastive loss) and works on its own;
``retailsim.data`` turns transaction logs into tensor caches. Importing the package needs neither Triton,
CUDA nor the compiled extension.
"""
__version__ = "0.1.0"

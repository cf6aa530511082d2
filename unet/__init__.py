"""U-Nets: the 2D vessel mask and the 3D synapse detector, and their shared training code. See issues 5 and 7."""

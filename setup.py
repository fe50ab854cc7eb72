"""lapa-jax: Latent Action Pretraining (LAPA) in JAX/Flax."""

from setuptools import find_packages, setup


def _requirements() -> list[str]:
    with open("requirements.txt") as f:
        lines = [line.split("#")[0].strip() for line in f]
    return [line for line in lines if line]


setup(
    name="lapa_jax",
    version="0.1.0",
    description="Latent Action Pretraining from Videos: a JAX/Flax training stack",
    python_requires=">=3.11",
    packages=find_packages(
        include=["lapa_jax", "lapa_jax.*", "data_pipelines", "data_pipelines.*"]
    ),
    install_requires=_requirements(),
)

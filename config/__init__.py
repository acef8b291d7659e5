"""Settings, connections and rule files: everything an integrator configures."""

"""entmon dashboard (Streamlit): talks to the monitor API only, never to Redis."""

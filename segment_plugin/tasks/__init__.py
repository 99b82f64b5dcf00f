"""Background work for the GUI: QgsTask subclasses that never touch widgets."""
